"""The rack lab: real service peers (NSQ, NETCONF leaf switches, IPMI BMCs, the Metal API stand-in, the PXE
network and QEMU machines). See metalcore/lab/README.md. Entry point: ``metalcore.lab.rack.RackLab``.

Nothing is imported here on purpose: the stand-in and the peers load independently, so one broken or
missing peer module does not take the others down with it.
"""
