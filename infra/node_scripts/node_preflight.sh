#!/bin/bash
# Node preflight: may this GPU node take traffic? Written once, run in two places: the preflight
# DaemonSet on every new GPU node (it removes the node's startup taint when this passes) and
# playbooks/project/node_preflight.yml (which also reuses single checks of it, e.g. `--checks mig`).
#
# It knows nothing about instance types: the caller passes what to expect (from infra/facts.py).
# It prints ONE JSON object on stdout and exits 0 iff every selected check passed:
#   {"ok": bool, "checks": [{"name", "ok", "expected", "found", "detail"}, ...]}
# A check that does not apply passes with found null and a detail starting "skipped:".
# Exit status: 0 ok, 1 a check failed, 2 bad arguments (the JSON then has one "arguments" check).
#
# Checks (all by default; --checks picks some):
#   gpus   `nvidia-smi -L` lists the expected number of GPUs
#   efa    `fi_info -p efa -t FI_EP_RDM` shows the expected number of EFA devices (distinct domains)
#   raid   the NVMe RAID0 array is mounted at the RAID mount and the kubelet's directory is on it
#   mig    the MIG layout matches the node's `nvidia.com/mig.config` label
#   nccl   single-node all_reduce_perf passes (skipped where it is not installed, unless required)
#
# Hardware commands are overridable, so tests (and odd hosts) can point elsewhere. Each is split on
# spaces, so NVIDIA_SMI="chroot /run/nvidia/driver nvidia-smi" reaches the GPU operator's driver root.
#   NVIDIA_SMI (nvidia-smi)  FI_INFO (fi_info)  ALL_REDUCE_PERF (all_reduce_perf)
#   MOUNTPOINT (mountpoint)  FINDMNT (findmnt)
set -uo pipefail

usage() {
  cat <<'EOF'
usage: node_preflight.sh [options]     (every option also has the environment variable shown)
  --gpus N              GPUs expected                                  PREFLIGHT_GPUS
  --efa N               EFA devices expected (efa_interface_count)     PREFLIGHT_EFA
  --nvme N              NVMe instance-store devices; 0 skips raid      PREFLIGHT_NVME (0)
  --raid-mount PATH     where the array is mounted                     PREFLIGHT_RAID_MOUNT (/mnt/k8s-disks/0)
  --kubelet-dir PATH    must live on the array                         PREFLIGHT_KUBELET_DIR (/var/lib/kubelet)
  --mig-config LABEL    nvidia.com/mig.config value; empty: no MIG     PREFLIGHT_MIG_CONFIG
  --nccl MODE           auto (run if installed) | require | skip       PREFLIGHT_NCCL (auto)
  --nccl-min-busbw GBs  lowest acceptable average bus bandwidth        PREFLIGHT_NCCL_MIN_BUSBW (0)
  --checks LIST         comma-separated subset of gpus,efa,raid,mig,nccl   PREFLIGHT_CHECKS (all)
  --timeout S           per hardware command, seconds                  PREFLIGHT_TIMEOUT (120)
  --nccl-timeout S      for all_reduce_perf, seconds                   PREFLIGHT_NCCL_TIMEOUT (900)
EOF
}

expected_gpus="${PREFLIGHT_GPUS:-}"
expected_efa="${PREFLIGHT_EFA:-}"
expected_nvme="${PREFLIGHT_NVME:-0}"
raid_mount="${PREFLIGHT_RAID_MOUNT:-/mnt/k8s-disks/0}"
kubelet_dir="${PREFLIGHT_KUBELET_DIR:-/var/lib/kubelet}"
mig_config="${PREFLIGHT_MIG_CONFIG:-}"
nccl_mode="${PREFLIGHT_NCCL:-auto}"
nccl_min_busbw="${PREFLIGHT_NCCL_MIN_BUSBW:-0}"
checks="${PREFLIGHT_CHECKS:-gpus,efa,raid,mig,nccl}"
cmd_timeout="${PREFLIGHT_TIMEOUT:-120}"
nccl_timeout="${PREFLIGHT_NCCL_TIMEOUT:-900}"

read -r -a nvidia_smi <<< "${NVIDIA_SMI:-nvidia-smi}"
read -r -a fi_info <<< "${FI_INFO:-fi_info}"
read -r -a all_reduce_perf <<< "${ALL_REDUCE_PERF:-all_reduce_perf}"
read -r -a mountpoint_cmd <<< "${MOUNTPOINT:-mountpoint}"
read -r -a findmnt_cmd <<< "${FINDMNT:-findmnt}"

# --- JSON output -----------------------------------------------------------------------------

results=()
all_ok=true

json_string() {
  local s
  s="$(printf '%s' "$1" | LC_ALL=C tr -d '\000-\010\013\014\016-\037')"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\r'/\\r}"
  s="${s//$'\t'/\\t}"
  printf '"%s"' "$s"
}

# Counts and bandwidths as JSON numbers, nothing as null, everything else as a string.
json_value() {
  if [[ -z "$1" ]]; then
    printf 'null'
  elif [[ "$1" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then
    printf '%s' "$1"
  else
    json_string "$1"
  fi
}

# record NAME OK(true|false) EXPECTED FOUND DETAIL
record() {
  [[ "$2" == true ]] || all_ok=false
  results+=("{\"name\": $(json_string "$1"), \"ok\": $2, \"expected\": $(json_value "$3"), \"found\": $(json_value "$4"), \"detail\": $(json_string "$5")}")
}

emit() {
  local IFS=,
  printf '{"ok": %s, "checks": [%s]}\n' "$all_ok" "${results[*]}"
  [[ "$all_ok" == true ]]
}

usage_error() {
  echo "node_preflight: $1" >&2
  usage >&2
  record arguments false "" "" "$1"
  emit
  exit 2
}

# --- Arguments -------------------------------------------------------------------------------

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus | --efa | --nvme | --raid-mount | --kubelet-dir | --mig-config | --nccl | --nccl-min-busbw | --checks | --timeout | --nccl-timeout)
      [[ $# -ge 2 ]] || usage_error "$1 needs a value"
      case "$1" in
        --gpus) expected_gpus="$2" ;;
        --efa) expected_efa="$2" ;;
        --nvme) expected_nvme="$2" ;;
        --raid-mount) raid_mount="$2" ;;
        --kubelet-dir) kubelet_dir="$2" ;;
        --mig-config) mig_config="$2" ;;
        --nccl) nccl_mode="$2" ;;
        --nccl-min-busbw) nccl_min_busbw="$2" ;;
        --checks) checks="$2" ;;
        --timeout) cmd_timeout="$2" ;;
        --nccl-timeout) nccl_timeout="$2" ;;
      esac
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done

selected() { [[ ",$checks," == *",$1,"* ]]; }

for check in ${checks//,/ }; do
  case "$check" in
    gpus | efa | raid | mig | nccl) ;;
    *) usage_error "unknown check '$check' in --checks (known: gpus,efa,raid,mig,nccl)" ;;
  esac
done
if selected gpus || selected nccl; then
  [[ "$expected_gpus" =~ ^[0-9]+$ ]] || usage_error "--gpus must be a whole number, got '$expected_gpus'"
fi
if selected efa; then
  [[ "$expected_efa" =~ ^[0-9]+$ ]] || usage_error "--efa must be a whole number, got '$expected_efa'"
fi
[[ "$expected_nvme" =~ ^[0-9]+$ ]] || usage_error "--nvme must be a whole number, got '$expected_nvme'"
[[ "$nccl_mode" =~ ^(auto|require|skip)$ ]] || usage_error "--nccl must be auto, require or skip, got '$nccl_mode'"
[[ "$nccl_min_busbw" =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_error "--nccl-min-busbw must be a number, got '$nccl_min_busbw'"

# --- Running hardware commands -----------------------------------------------------------------

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# run SECONDS CMD...: stdout in $out, rc in $rc (127: not installed, 124: timed out), stderr in $err.
run() {
  local seconds="$1"
  shift
  if ! command -v "$1" >/dev/null 2>&1; then
    out="" err="$1: command not found" rc=127
    return
  fi
  out="$(timeout "$seconds" "$@" 2>"$scratch/stderr")"
  rc=$?
  err="$(head -c 2000 "$scratch/stderr")"
  [[ $rc -ne 124 ]] || err="timed out after ${seconds}s: $* ${err}"
}

# The first line of whatever a failed command said, for the detail field.
why() { printf '%s' "${err:-$out}" | grep -m1 -v '^[[:space:]]*$' || printf 'exit status %s' "$rc"; }

# --- gpus ------------------------------------------------------------------------------------

gpu_listing=""
gpu_listing_rc=0
list_gpus() {
  run "$cmd_timeout" "${nvidia_smi[@]}" -L
  gpu_listing="$out"
  gpu_listing_rc=$rc
  gpu_listing_why=""
  [[ $rc -eq 0 ]] || gpu_listing_why="$(why)"
}

gpus_ok=false
check_gpus() {
  local found
  found="$(printf '%s\n' "$gpu_listing" | grep -cE '^GPU [0-9]+: ')"
  if [[ $gpu_listing_rc -ne 0 ]]; then
    record gpus false "$expected_gpus" 0 "${nvidia_smi[*]} -L failed: $gpu_listing_why"
  elif [[ "$found" -ne "$expected_gpus" ]]; then
    record gpus false "$expected_gpus" "$found" "${nvidia_smi[*]} -L lists $found GPU(s), expected $expected_gpus"
  else
    gpus_ok=true
    record gpus true "$expected_gpus" "$found" "$(printf '%s\n' "$gpu_listing" | grep -m1 -E '^GPU 0: ' | sed -E 's/^GPU 0: (.*) \(UUID.*/\1/')"
  fi
}

# --- efa -------------------------------------------------------------------------------------

check_efa() {
  run "$cmd_timeout" "${fi_info[@]}" -p efa -t FI_EP_RDM
  # libfabric lists one block per (fabric, domain, endpoint type); 2.x lists each device twice
  # (fabric efa and efa-direct). Count distinct devices: domain minus its -rdm/-dgrm suffix.
  local devices found
  devices="$(printf '%s\n' "$out" | awk '
    /^provider:/ { efa = ($2 ~ /^efa/) }
    efa && $1 == "domain:" { d = $2; sub(/-(rdm|dgrm)$/, "", d); print d }' | sort -u | paste -sd ' ')"
  found="$(printf '%s' "$devices" | wc -w)"
  if [[ $rc -ne 0 && $found -eq 0 ]]; then
    # fi_info exits non-zero with "fi_getinfo: -61 (No data available)" when there is no EFA.
    record efa false "$expected_efa" 0 "${fi_info[*]} -p efa -t FI_EP_RDM found no EFA device: $(why)"
  elif [[ "$found" -ne "$expected_efa" ]]; then
    record efa false "$expected_efa" "$found" "EFA devices: ${devices:-none} (expected $expected_efa)"
  else
    record efa true "$expected_efa" "$found" "EFA devices: $devices"
  fi
}

# --- raid ------------------------------------------------------------------------------------

# findmnt prints a bind mount's source as /dev/md127[/kubelet]: the device is the part before '['.
source_of() {
  run "$cmd_timeout" "${findmnt_cmd[@]}" -n -o SOURCE --target "$1"
  printf '%s' "${out%%\[*}" | head -n1
}

check_raid() {
  local expected device kubelet_device
  if [[ "$expected_nvme" -eq 0 ]]; then
    record raid true "" "" "skipped: this instance type has no NVMe instance store"
    return
  fi
  if [[ "$expected_nvme" -gt 1 ]]; then
    expected="md RAID0 of $expected_nvme NVMe devices at $raid_mount"
  else
    expected="the NVMe instance-store device at $raid_mount"
  fi
  run "$cmd_timeout" "${mountpoint_cmd[@]}" -q "$raid_mount"
  if [[ $rc -ne 0 ]]; then
    record raid false "$expected" "not mounted" "$raid_mount is not a mount point; the RAID0 array was not built or not mounted (nodeadm localStorage / nvme_raid0.sh)"
    return
  fi
  device="$(source_of "$raid_mount")"
  if [[ "$expected_nvme" -gt 1 && "$device" != /dev/md* ]]; then
    record raid false "$expected" "$device at $raid_mount" "$raid_mount is mounted from '$device', not from an md RAID0 array"
    return
  fi
  kubelet_device="$(source_of "$kubelet_dir")"
  if [[ "$kubelet_device" != "$device" ]]; then
    record raid false "$expected" "$device at $raid_mount" "$kubelet_dir is on '${kubelet_device:-?}', not on the array $device: pods' data would land on the root volume"
    return
  fi
  record raid true "$expected" "$device at $raid_mount" "$kubelet_dir is on $device"
}

# --- mig -------------------------------------------------------------------------------------

# The layout `nvidia-smi -L` shows, named as the label would name it: all-disabled (no MIG
# devices), all-<profile> (every GPU split the same way into one profile), else per GPU.
mig_layout() {
  printf '%s\n' "$gpu_listing" | awk '
    /^GPU [0-9]+: / { gpu = $2; sub(/:$/, "", gpu); order[++n] = gpu; next }
    /^[[:space:]]+MIG [^ ]+ +Device/ { count[gpu]++; profile = $2
      if (!(gpu SUBSEP profile in seen)) { seen[gpu, profile] = 1; kinds[gpu] = kinds[gpu] (kinds[gpu] ? "+" : "") profile }
      per[gpu, profile]++; total++ }
    END {
      if (total == 0) { print "all-disabled"; exit }
      uniform = 1
      for (i = 1; i <= n; i++) {
        g = order[i]
        if (count[g] == 0 || index(kinds[g], "+") || kinds[g] != kinds[order[1]] || count[g] != count[order[1]]) uniform = 0
      }
      if (uniform) { print "all-" kinds[order[1]]; exit }
      line = ""
      for (i = 1; i <= n; i++) {
        g = order[i]; desc = ""
        if (count[g] == 0) desc = "none"
        else { split(kinds[g], ks, "+"); for (k in ks) desc = desc (desc ? "+" : "") per[g, ks[k]] "x" ks[k] }
        line = line (line ? " " : "") "GPU" g ":" desc
      }
      print line
    }'
}

mig_summary() {
  printf '%s\n' "$gpu_listing" | awk '
    /^GPU [0-9]+: / { gpus++ } /^[[:space:]]+MIG / { migs++; p[$2]++ }
    END { s = gpus " GPU(s), " migs + 0 " MIG device(s)"; for (k in p) s = s ", " p[k] "x" k; print s }'
}

check_mig() {
  if [[ -z "$mig_config" ]]; then
    record mig true "" "" "skipped: no nvidia.com/mig.config expected (GPU without MIG)"
    return
  fi
  if [[ $gpu_listing_rc -ne 0 ]]; then
    record mig false "$mig_config" "" "${nvidia_smi[*]} -L failed: $gpu_listing_why"
    return
  fi
  local layout modes enabled summary
  layout="$(mig_layout)"
  summary="$(mig_summary)"
  case "$mig_config" in
    all-disabled)
      # MIG mode on without instances hides the GPUs from CUDA: as wrong as the wrong layout.
      run "$cmd_timeout" "${nvidia_smi[@]}" --query-gpu=mig.mode.current --format=csv,noheader
      modes="$out"
      enabled="$(printf '%s\n' "$modes" | grep -c '^Enabled')"
      if [[ "$layout" != all-disabled ]]; then
        record mig false all-disabled "$layout" "MIG devices present: $summary"
      elif [[ $rc -ne 0 ]]; then
        record mig false all-disabled "" "could not read MIG mode: $(why)"
      elif [[ "$enabled" -gt 0 ]]; then
        record mig false all-disabled "MIG mode enabled" "$enabled GPU(s) have MIG mode enabled but no MIG devices"
      else
        record mig true all-disabled all-disabled "MIG disabled: $summary"
      fi
      ;;
    all-balanced)
      # The balanced mix differs per GPU model; every GPU must at least be partitioned.
      if [[ "$layout" == all-disabled ]] || printf '%s' "$layout" | grep -q ':none'; then
        record mig false all-balanced "$layout" "every GPU must be partitioned: $summary"
      else
        record mig true all-balanced "$layout" "$summary"
      fi
      ;;
    all-*)
      if [[ "$layout" == "$mig_config" ]]; then
        record mig true "$mig_config" "$layout" "$summary"
      else
        record mig false "$mig_config" "$layout" "layout differs from nvidia.com/mig.config: $summary"
      fi
      ;;
    *)
      record mig false "$mig_config" "$layout" "cannot verify '$mig_config': only all-disabled, all-balanced and all-<profile> are known"
      ;;
  esac
}

# --- nccl ------------------------------------------------------------------------------------

check_nccl() {
  local expected="$nccl_min_busbw"
  if [[ "$nccl_mode" == skip ]]; then
    record nccl true "$expected" "" "skipped: --nccl skip"
    return
  fi
  if ! command -v "${all_reduce_perf[0]}" >/dev/null 2>&1; then
    if [[ "$nccl_mode" == require ]]; then
      record nccl false "$expected" "" "${all_reduce_perf[0]} is not installed (--nccl require)"
    else
      record nccl true "$expected" "" "skipped: ${all_reduce_perf[0]} is not installed"
    fi
    return
  fi
  if [[ "$gpus_ok" != true ]]; then
    # The gpus check already failed the node; a required smoke test fails with it.
    local ok=true
    [[ "$nccl_mode" != require ]] || ok=false
    record nccl "$ok" "$expected" "" "skipped: the GPU check did not pass"
    return
  fi
  if [[ "$(mig_layout)" != all-disabled ]]; then
    record nccl true "$expected" "" "skipped: NCCL does not run across MIG devices"
    return
  fi
  run "$nccl_timeout" "${all_reduce_perf[@]}" -b 8M -e 256M -f 2 -g "$expected_gpus" -c 1
  local busbw oob
  busbw="$(printf '%s\n' "$out" | sed -nE 's/^# *Avg bus bandwidth *: *([0-9.]+).*/\1/p' | tail -n1)"
  oob="$(printf '%s\n' "$out" | sed -nE 's/^# *Out of bounds values *: *(.*)$/\1/p' | tail -n1)"
  if [[ $rc -ne 0 ]]; then
    record nccl false "$expected" "$busbw" "${all_reduce_perf[*]} failed: $(why)"
  elif [[ -z "$busbw" ]]; then
    record nccl false "$expected" "" "no '# Avg bus bandwidth' line in all_reduce_perf's output"
  elif [[ "$oob" != "0 OK"* ]]; then
    record nccl false "$expected" "$busbw" "all-reduce results were wrong: Out of bounds values: ${oob:-missing}"
  elif awk -v f="$busbw" -v m="$nccl_min_busbw" 'BEGIN { exit !(f < m) }'; then
    record nccl false "$expected" "$busbw" "average bus bandwidth $busbw GB/s is below $nccl_min_busbw GB/s"
  else
    record nccl true "$expected" "$busbw" "all_reduce_perf on $expected_gpus GPU(s): average bus bandwidth $busbw GB/s, results correct"
  fi
}

# --- Main ------------------------------------------------------------------------------------

if selected gpus || selected mig || selected nccl; then
  list_gpus
fi
if selected gpus; then check_gpus; else gpus_ok=true; fi
selected efa && check_efa
selected raid && check_raid
selected mig && check_mig
selected nccl && check_nccl

emit
