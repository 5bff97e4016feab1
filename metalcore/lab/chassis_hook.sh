#!/bin/sh
# ipmi_sim chassis_control hook of the rack lab (lan.conf: chassis_control "<shell> <this> <statedir>").
#   <this> <statedir> get power|boot ...          -> prints "power:<0|1>" / "boot:<dev>" lines
#   <this> <statedir> set <parm> "<value>" ...     -> parm: power reset shutdown boot identify
# ipmi_sim runs it through popen, synchronously, once per IPMI command (every Get Chassis Status too), so it
# uses shell builtins only: no cat, no date (each would be one more fork + exec per IPMI request). The lab runs
# it with busybox's static ash (bmcs.py), which has $EPOCHREALTIME; under dash the time falls back to date.
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
      power) read -r v < "$d/power"; echo "power:$v" ;;
      boot)  read -r v < "$d/boot"; echo "boot:$v" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
set)
  t=${EPOCHREALTIME:-$(date +%s.%N)}
  while [ $# -ge 2 ]; do
    p=$1; v=$2; shift 2
    echo "$t $p $v" >> "$d/events.log"
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
