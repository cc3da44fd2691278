#!/bin/bash
# Build one RAID0 array from the instance's NVMe instance-store devices and put the kubelet's and
# containerd's data on it, so model weights and image layers load from local NVMe, not EBS.
# The same layout as nodeadm's `localStorage.strategy: RAID0` on AL2023: the array is mounted at
# /mnt/k8s-disks/0 and /var/lib/kubelet, /var/lib/containerd and /var/log/pods are bind-mounted
# onto it. Safe to run again: a mounted array is left alone, an existing one is re-assembled.
set -euo pipefail

MOUNT_POINT="${PEAKGUARD_RAID_MOUNT:-/mnt/k8s-disks/0}"
ARRAY="${PEAKGUARD_RAID_DEVICE:-/dev/md/kubernetes}"
DEVICE_GLOB="${PEAKGUARD_NVME_GLOB:-/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*}"
FSTAB="${PEAKGUARD_FSTAB:-/etc/fstab}"
read -r -a BIND_DIRS <<< "${PEAKGUARD_BIND_DIRS:-/var/lib/kubelet /var/lib/containerd /var/log/pods}"

log() { echo "nvme-raid0: $*" >&2; }

if mountpoint -q "$MOUNT_POINT"; then
  log "$MOUNT_POINT is already mounted; nothing to do"
  exit 0
fi

# Each device appears under several by-id names; resolve and de-duplicate, skip partitions.
mapfile -t devices < <(for link in $DEVICE_GLOB; do
  [[ -e "$link" && "$link" != *-part* ]] && readlink -f "$link"
done | sort -u)

if [[ ${#devices[@]} -eq 0 ]]; then
  log "no NVMe instance-store devices found; data stays on the root volume"
  exit 0
fi

if [[ ${#devices[@]} -eq 1 ]]; then
  target="${devices[0]}"
else
  if [[ ! -e "$ARRAY" ]]; then
    mdadm --assemble "$ARRAY" "${devices[@]}" 2>/dev/null \
      || mdadm --create "$ARRAY" --run --force --level=0 --name=kubernetes \
           --raid-devices="${#devices[@]}" "${devices[@]}"
  fi
  target="$ARRAY"
fi

if ! blkid "$target" >/dev/null 2>&1; then
  log "formatting $target (${#devices[@]} device(s)) as xfs"
  mkfs.xfs -f -L k8s-raid0 "$target"
fi
mkdir -p "$MOUNT_POINT"
mount -o defaults,noatime "$target" "$MOUNT_POINT"
grep -q " $MOUNT_POINT " "$FSTAB" || echo "$target $MOUNT_POINT xfs defaults,noatime,nofail 0 2" >> "$FSTAB"

# containerd must not hold its old directory open while it moves onto the array.
systemctl stop containerd 2>/dev/null || true
for dir in "${BIND_DIRS[@]}"; do
  name="$(basename "$dir")"
  mkdir -p "$MOUNT_POINT/$name" "$dir"
  mount --bind "$MOUNT_POINT/$name" "$dir"
  grep -q " $dir none bind" "$FSTAB" || echo "$MOUNT_POINT/$name $dir none bind,nofail 0 0" >> "$FSTAB"
done
log "mounted $target at $MOUNT_POINT (${#devices[@]} device(s)); bound ${BIND_DIRS[*]}"
