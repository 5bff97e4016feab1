#!/bin/sh
# The lab chassis hook as it was before 2026-11-25 (dash, $(cat) per get, $(date) per set): kept only so
# bench/bench_nsq_ipmi.py --hook "/bin/sh bench/chassis_hook_before.sh" can reproduce the "before" figures.
# ipmi_sim chassis_control hook of the rack lab (lan.conf: chassis_control "/bin/sh <this> <statedir>").
#   <this> <statedir> get power|boot ...          -> prints "power:<0|1>" / "boot:<dev>" lines
#   <this> <statedir> set <parm> "<value>" ...     -> parm: power reset shutdown boot identify
# ipmi_sim runs it through popen, synchronously, once per IPMI command: keep it tiny.
# State lives in files a test can read: power (0|1), boot (none|pxe|default|cdrom|bios),
# identify ("<interval> <force>"), events.log ("<epoch> <parm> <value>" per set).
# `touch <statedir>/fail` makes every call fail (ipmi_sim answers completion code 0xff).
d=$1; op=$2; shift 2
[ -f "$d/power" ] || echo 0 > "$d/power"
[ -f "$d/boot" ] || echo default > "$d/boot"
[ -f "$d/fail" ] && { echo "injected failure"; exit 1; }
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$d/power")" ;;
      boot)  echo "boot:$(cat "$d/boot")" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    p=$1; v=$2; shift 2
    echo "$(date +%s.%N) $p $v" >> "$d/events.log"
    case $p in
      power) echo "$v" > "$d/power" ;;
      reset) : ;;
      shutdown) echo 0 > "$d/power" ;;
      boot)  echo "$v" > "$d/boot" ;;
      identify) echo "$v" > "$d/identify" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
check) exit 1 ;;
*) echo "Unknown operation: $op"; exit 1 ;;
esac
