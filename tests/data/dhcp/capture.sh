#!/bin/sh
# capture.sh STEP -- capture real DHCP/PXE frames for tests/data/dhcp/*.bin (run as root).
# Builds two private network namespaces (mcx-rack, mcx-srv), never touches the host's interfaces,
# and records with tcpdump into $W/<step>.pcap. extract_pcap.py turns a pcap into one .bin per frame.
# STEP: up | clients | ipxe-bios | ipxe-uefi | edk2-uefi | http-uefi | proxy-edk2 | proxy-ipxe | proxy2-edk2 | proxy2-ipxe | proxy-http | down
# Facts behind each flag: /work/shared/research/pxe-on-this-machine.md (sections 1-8).
set -eu
W=${W:-/tmp/mcx-cap}; mkdir -p "$W"; R=mcx-rack; S=mcx-srv
HERE=$(cd "$(dirname "$0")" && pwd)

tcpd() {  # tcpd NAME: background tcpdump on the rack bridge, pid in $W/tcpdump.pid
  ip netns exec $R tcpdump -i mcxbr --immediate-mode -U -s 0 -w "$W/$1.pcap" \
     'udp and (port 67 or port 68 or port 4011)' >"$W/$1.tcpdump.log" 2>&1 &
  echo $! > "$W/tcpdump.pid"; sleep 1
}
tcpd_stop() { sleep 0.5; kill "$(cat "$W/tcpdump.pid")"; sleep 0.3; }

qemu_run() {  # qemu_run NAME SECONDS EXTRA...: PXE boot a TCG VM on mcxtap0 for at most SECONDS
  name=$1; secs=$2; shift 2
  ip netns exec $S qemu-system-x86_64 -accel tcg -m 256 -boot n -no-reboot \
    -display none -machine graphics=off -serial file:"$W/$name.serial" -monitor none \
    -netdev tap,id=n0,ifname=mcxtap0,script=no,downscript=no \
    -smbios type=1,uuid=11223344-5566-7788-99aa-bbccddeeff00 "$@" </dev/null >"$W/$name.qemu.log" 2>&1 &
  qpid=$!; echo $qpid > "$W/qemu.pid"
  sleep "$secs"; kill "$qpid" 2>/dev/null || true; sleep 0.5
}

case "$1" in
up)
  ip netns add $R; ip netns add $S
  ip link add mcxr0 netns $R type veth peer name mcxs0 netns $S
  ip -n $R link set lo up; ip -n $S link set lo up
  ip -n $R link add name mcxbr address 02:00:00:00:0c:01 type bridge stp_state 0 forward_delay 0
  ip -n $R link set mcxr0 master mcxbr; ip -n $R link set mcxr0 up
  ip -n $R addr add 10.251.77.1/24 dev mcxbr
  ip -n $R addr add fd00:251::1/64 dev mcxbr nodad
  ip -n $R link set mcxbr up
  # the server side: one bridge, one veth per simulated NIC (own MAC each), one tap for QEMU
  ip -n $S link add name mcxsbr address 02:00:00:00:0c:02 type bridge stp_state 0 forward_delay 0
  ip -n $S link set mcxs0 master mcxsbr; ip -n $S link set mcxs0 up; ip -n $S link set mcxsbr up
  for n in 1 2; do
    ip -n $S link add mcxnic$n address 52:54:00:00:00:0$n type veth peer name mcxnic${n}b
    ip -n $S link set mcxnic${n}b master mcxsbr; ip -n $S link set mcxnic${n}b up; ip -n $S link set mcxnic$n up
  done
  ip -n $S tuntap add dev mcxtap0 mode tap
  ip -n $S link set mcxtap0 master mcxsbr; ip -n $S link set mcxtap0 up
  cp /usr/lib/ipxe/undionly.kpxe "$W/undionly.kpxe"
  # site DHCP: IPs for everyone; iPXE (user class iPXE) gets undionly.kpxe by TFTP, so the ROM's iPXE
  # chainloads Debian's newer iPXE, whose own DISCOVER we want too (it loops; the VM is killed).
  cat > "$W/dnsmasq.conf" <<CONF
port=0
interface=mcxbr
bind-interfaces
dhcp-range=10.251.77.100,10.251.77.199,255.255.255.0,1h
dhcp-leasefile=$W/dnsmasq.leases
no-ping
log-dhcp
log-facility=$W/dnsmasq.log
enable-ra
dhcp-range=fd00:251::,ra-only,64
enable-tftp
tftp-root=$W
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-boot=tag:ipxe,tag:!efi64,undionly.kpxe,,10.251.77.1
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.251.77.1
CONF
  ip netns exec $R dnsmasq --no-daemon --conf-file="$W/dnsmasq.conf" >"$W/dnsmasq.out" 2>&1 &
  echo $! > "$W/dnsmasq.pid"
  printf '#!/bin/sh\necho "udhcpc-script: $1 ip=$ip boot_file=$boot_file"\n' > "$W/udhcpc.script"
  printf '#!/bin/sh\necho "dhclient-script: reason=$reason new_ip=$new_ip_address new_filename=$new_filename" >> %s/dhclient-script.log\n' "$W" > "$W/dhclient.script"
  chmod +x "$W/udhcpc.script" "$W/dhclient.script"
  cat > "$W/dhclient.conf" <<CONF
option pxe-client-arch code 93 = unsigned integer 16;
option pxe-client-ndi  code 94 = string;
option pxe-client-guid code 97 = string;
send vendor-class-identifier "PXEClient:Arch:00007:UNDI:003016";
send pxe-client-arch 7;
send pxe-client-ndi 01:03:10;
send pxe-client-guid 00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00;
send user-class "iPXE";
request subnet-mask, routers, bootfile-name, tftp-server-name, vendor-encapsulated-options;
timeout 20;
CONF
  ;;
clients)
  tcpd clients
  ip netns exec $S busybox udhcpc -i mcxnic1 -f -q -n -t 4 -T 2 -s "$W/udhcpc.script" \
    -V PXEClient:Arch:00007:UNDI:003016 -x 0x5d:0007 -x 0x5e:010310 \
    -x 0x61:00a1b2c3d4e5f60718293a4b5c6d7e8f90 -x 0x4d:0469505845 -O 67 > "$W/udhcpc.out" 2>&1 || true
  rm -f "$W/dhclient.leases"
  ip netns exec $S dhclient -4 -1 -v -cf "$W/dhclient.conf" -lf "$W/dhclient.leases" \
    -pf "$W/dhclient.pid" -sf "$W/dhclient.script" mcxnic2 > "$W/dhclient.out" 2>&1 || true
  kill "$(cat "$W/dhclient.pid")" 2>/dev/null || true
  tcpd_stop ;;
ipxe-bios)
  tcpd ipxe-bios
  qemu_run ipxe-bios ${SECS:-12} -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56
  tcpd_stop ;;
ipxe-uefi)
  tcpd ipxe-uefi
  qemu_run ipxe-uefi ${SECS:-15} -bios /usr/share/ovmf/OVMF.fd -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:57
  tcpd_stop ;;
edk2-uefi)
  # romfile= drops the iPXE option ROM, so OVMF's own VirtioNetDxe + PxeBcDxe (and HttpBootDxe) run
  tcpd edk2-uefi
  qemu_run edk2-uefi ${SECS:-90} -bios /usr/share/ovmf/OVMF.fd -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:58,romfile=
  tcpd_stop ;;
http-uefi)
  # EDK2's UEFI HTTP boot: switch off OVMF's PXEv4/PXEv6 boot options (fw_cfg knobs read by
  # OvmfPkg's PlatformBootManagerLib) so the boot manager reaches "UEFI HTTPv4" at once
  tcpd http-uefi
  qemu_run http-uefi ${SECS:-60} -bios /usr/share/ovmf/OVMF.fd \
    -fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=n -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=n \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:59,romfile=
  tcpd_stop ;;
proxy-edk2|proxy-ipxe|proxy2-edk2|proxy2-ipxe|proxy-http)
  # our ProxyDHCP (metalcore.protocol.pxe via proxy_responder.py) next to dnsmasq: records our OFFER,
  # EDK2's port-4011 ProxyDHCPREQUEST (BINL) and our ACK; ipxe.efi from Debian is served by TFTP
  cp /usr/lib/ipxe/ipxe.efi "$W/ipxe.efi"
  case "$1" in proxy2-*) two=1 ;; *) two=0 ;; esac   # proxy2-*: OFFER without boot file -> port 4011
  ip netns exec $R env TWO_STEP=$two "$HERE/../../../.venv/bin/python" "$HERE/proxy_responder.py" mcxbr 10.251.77.1 \
     > "$W/$1.responder.log" 2>&1 &
  echo $! > "$W/responder.pid"; sleep 1
  tcpd $1
  if [ "$1" = proxy-http ]; then   # UEFI HTTP boot of Debian's ipxe.efi from a plain http.server
    mkdir -p "$W/www/boot"; cp /usr/lib/ipxe/ipxe.efi "$W/www/boot/ipxe.efi"
    ip netns exec $R python3 -m http.server --bind 10.251.77.1 --directory "$W/www" 8080 \
       > "$W/httpd.log" 2>&1 &
    echo $! > "$W/httpd.pid"; sleep 1
    qemu_run $1 ${SECS:-40} -bios /usr/share/ovmf/OVMF.fd \
      -fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=n -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=n \
      -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:5c,romfile=
    kill "$(cat "$W/httpd.pid")"
  elif [ "${1#*-}" = edk2 ]; then
    qemu_run $1 ${SECS:-40} -bios /usr/share/ovmf/OVMF.fd -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:5a,romfile=
  else
    qemu_run $1 ${SECS:-12} -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:5b
  fi
  tcpd_stop; kill "$(cat "$W/responder.pid")" ;;
down)
  for f in "$W"/dnsmasq.pid "$W"/qemu.pid "$W"/tcpdump.pid "$W"/dhclient.pid "$W"/responder.pid "$W"/httpd.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"
  done
  ip netns del $S 2>/dev/null || true; ip netns del $R 2>/dev/null || true ;;
*) echo "usage: $0 up|clients|ipxe-bios|ipxe-uefi|edk2-uefi|down" >&2; exit 2 ;;
esac
