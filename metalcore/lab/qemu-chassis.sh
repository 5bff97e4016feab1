#!/bin/sh
# ipmi_sim chassis_control hook that drives a QEMU machine (ipmi-qemu.md, "mode B").
# lan.conf:  chassis_control "/bin/sh <this> <statedir>"
#   <this> <statedir> get power|boot ...        -> "power:<0|1>" / "boot:<dev>" lines
#   <this> <statedir> set <parm> "<value>" ...   -> power reset shutdown boot identify
#
# <statedir> holds (written by metalcore/lab/machines.py, Machine.write_hook_files):
#   qemu.cmd   the QEMU argv, one line, words without spaces, no boot order/-daemonize/-pidfile;
#              it starts with "ip netns exec <machine netns>" so the taps are found; the PXE NIC
#              is the device with id=pxenic, the disk (if any) id=bootdisk
#   qmp.sock   QEMU's QMP socket (named in qemu.cmd)
# and this hook keeps there: boot (pxe|default|cdrom|bios|none, sticky), qemu.pid, qemu.err,
# identify, events.log ("<epoch> <parm> <value>" per set: tests assert on it).
# `touch <statedir>/fail` makes every call fail (ipmi_sim answers completion code 0xff).
#
# Power is "QEMU alive" (mirrored into <statedir>/power on every call, for readers of the
# state files; a guest power-off shows there at the next call): the pidfile's process exists, is not a zombie (PID 1 here reaps late,
# gotcha 5) and has our pidfile on its command line (pids get recycled).
# ipmi_sim popen()s us and blocks until our stdout closes, so QEMU must -daemonize and must not
# keep ipmi_sim's sockets (not close-on-exec): they are closed before exec (gotchas 1, 2).
# A power on / reset / cycle starts QEMU with the stored device first, then the other, as a server's
# firmware falls back (pxe: network then disk; anything else: disk then network), given as bootindex
# (-set device.<id>.bootindex=N, as machines.boot_args does): QEMU writes it into the fw_cfg file
# "bootorder", which SeaBIOS and OVMF both follow (OVMF ignores -boot order).  Setting the boot
# device while QEMU runs also re-indexes the devices over QMP (qom-set); QEMU rebuilds "bootorder"
# on every reset, so a guest-initiated reboot follows it too, on both firmwares.
d=$1; op=$2; shift 2
[ -f "$d/boot" ] || echo default > "$d/boot"
[ -f "$d/fail" ] && { echo "injected failure"; exit 1; }

alive() {
  ap=$(cat "$d/qemu.pid" 2>/dev/null) && [ -n "$ap" ] || return 1
  [ "$(cut -d')' -f2 "/proc/$ap/stat" 2>/dev/null | cut -d' ' -f2)" = Z ] && return 1
  grep -q "$d/qemu.pid" "/proc/$ap/cmdline" 2>/dev/null
}
netidx() { if [ "$(cat "$d/boot")" = pxe ]; then echo 1; else echo 2; fi; }  # the NIC's bootindex
bootargs() {  # words without spaces: the caller word-splits them
  n=$(netidx)
  echo "-set device.pxenic.bootindex=$n"
  grep -q 'id=bootdisk' "$d/qemu.cmd" && echo "-set device.bootdisk.bootindex=$((3 - n))"
  [ "$(cat "$d/boot")" = bios ] && echo "-boot menu=on"
  return 0
}
reindex() {  # the running VM's next reset follows the stored device; clear both first, so that no
  n=$(netidx)  # qom-set meets an index the other device holds ("bootindex 1 has already been used")
  p=/machine/peripheral
  qmp "{\"execute\":\"qom-set\",\"arguments\":{\"path\":\"$p/pxenic\",\"property\":\"bootindex\",\"value\":-1}}" \
      "{\"execute\":\"qom-set\",\"arguments\":{\"path\":\"$p/bootdisk\",\"property\":\"bootindex\",\"value\":-1}}" \
      "{\"execute\":\"qom-set\",\"arguments\":{\"path\":\"$p/pxenic\",\"property\":\"bootindex\",\"value\":$n}}" \
      "{\"execute\":\"qom-set\",\"arguments\":{\"path\":\"$p/bootdisk\",\"property\":\"bootindex\",\"value\":$((3 - n))}}"
}
qmp() {  # qmp '<json command>' ...: best effort, the VM may be going away (or lack the device)
  [ -S "$d/qmp.sock" ] || return 0
  # each command waits for its own answer, not a fixed sleep (4 qom-sets: ~0.1 s in all): ipmi_sim
  # blocks on this hook, and pyghmi resends a request it has no answer to after 0.5-1 s
  python3 - "$d/qmp.sock" "$@" <<'EOF' >/dev/null 2>&1
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
f = s.makefile("rwb")
f.readline()                                      # greeting
for m in ['{"execute":"qmp_capabilities"}'] + sys.argv[2:]:
    f.write(m.encode() + b"\n")
    f.flush()
    while not {"return", "error"} & json.loads(f.readline()).keys():
        pass                                      # an event, not the answer
EOF
}
start() {
  alive && return 0
  rm -f "$d/qemu.pid"
  echo "$(date +%s.%N) start boot=$(cat "$d/boot")" >> "$d/events.log"
  # close every inherited fd above 2 (ipmi_sim's UDP/TCP sockets), then exec QEMU
  bash -c 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done 2>/dev/null; exec "$@"' \
    qemu $(cat "$d/qemu.cmd") $(bootargs) -daemonize -pidfile "$d/qemu.pid" </dev/null >>"$d/qemu.err" 2>&1
}
stop() {
  alive || { rm -f "$d/qemu.pid"; return 0; }
  qp=$ap; kill -TERM "$qp"; i=0
  while alive && [ $i -lt 100 ]; do sleep 0.02; i=$((i+1)); done
  alive && kill -KILL "$qp"
  rm -f "$d/qemu.pid"
}

sync_power() { if alive; then echo 1 > "$d/power"; else echo 0 > "$d/power"; fi; }
trap sync_power EXIT

case $op in
get)
  for p in "$@"; do
    case $p in
      power) if alive; then echo power:1; else echo power:0; fi ;;
      boot) echo "boot:$(cat "$d/boot")" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    p=$1; v=$2; shift 2
    echo "$(date +%s.%N) $p $v" >> "$d/events.log"
    case $p in
      power) if [ "$v" = 1 ]; then start; else stop; fi ;;
      reset) if alive; then stop; start; fi ;;   # cold restart: the stored boot device applies
      shutdown) alive && qmp '{"execute":"system_powerdown"}' ;;
      boot)
        echo "$v" > "$d/boot"
        alive && reindex ;;
      identify) echo "$v" > "$d/identify" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
check) exit 1 ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
exit 0
