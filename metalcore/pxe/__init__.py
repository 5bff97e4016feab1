"""The PXE stage's I/O around the pure protocol code (metalcore/protocol/): one module per job.

    rawsock.py    AF_PACKET socket + classic BPF + PACKET_AUXDATA/FANOUT/STATISTICS (the syscall seam)
    watch.py      decode every DHCP frame, count it, publish it as a ``dhcp`` bus event
    responder.py  ProxyDHCP offers (raw frames) and the port-4011 boot server (UDP socket)
    decisions.py  non-blocking front on metalcore.boot.BootDecider; PXE Booting events, boot loops
    tftp.py       read-only TFTP (tftpy) for the iPXE binaries
    http.py       aiohttp: per-MAC iPXE script, kernel/initrd proxied, cached and sent with sendfile
    metrics.py    metalcore_pxe_* declared once
    service.py    wires them; stages/pxe.py runs it
"""
