"""What a report records about the machine: the INT8 instructions decide the INT8 ratio."""

from __future__ import annotations

from pathlib import Path

from model_service.machine import describe, summary

_AVX2_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags\t\t: fpu sse2 avx avx2 fma bmi2

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags\t\t: fpu sse2 avx avx2 fma bmi2
"""


def test_the_cpu_model_and_its_int8_instructions_are_read_from_cpuinfo(tmp_path: Path) -> None:
    (cpuinfo := tmp_path / "cpuinfo").write_text(_AVX2_XEON.replace("bmi2", "bmi2 avx512f avx512_vnni"))
    machine = describe(cpuinfo=cpuinfo)
    assert machine["cpu_model"] == "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"
    assert machine["int8_instruction_sets"] == ["avx2", "avx512f", "avx512_vnni"]
    assert "INT8 instructions: avx2 avx512f avx512_vnni" in summary(machine)


def test_a_cpu_without_vnni_says_so(tmp_path: Path) -> None:
    (cpuinfo := tmp_path / "cpuinfo").write_text(_AVX2_XEON)
    assert describe(cpuinfo=cpuinfo)["int8_instruction_sets"] == ["avx2"]


def test_no_cpuinfo_is_not_an_error(tmp_path: Path) -> None:
    machine = describe(cpuinfo=tmp_path / "absent")
    assert machine["int8_instruction_sets"] == []
    assert machine["cpus"] >= 1


def test_a_report_from_before_the_cpu_was_recorded_still_renders() -> None:
    old = {"cpus": 2, "torch": "2.13.0+cpu", "torch_threads": 2, "python": "3.11.7", "processor": "x86_64"}
    assert summary(old) == "2 CPUs (CPU model and instructions not recorded), torch 2.13.0+cpu, 2 model threads"


def test_an_arm_cpu_names_its_int8_dot_product_features(tmp_path: Path) -> None:
    (cpuinfo := tmp_path / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16\n")
    assert describe(cpuinfo=cpuinfo)["int8_instruction_sets"] == ["asimddp", "i8mm"]
