"""The rack lab: real service peers (NSQ, NETCONF leaf switches, IPMI BMCs) on loopback.

See metalcore/lab/README.md.  Public entry point: ``RackLab``.
"""
from metalcore.lab.bmcs import Bmc, BmcFarm
from metalcore.lab.nsq import NsqPeer
from metalcore.lab.procs import LabError, MissingPeerBinary, ProcRecord
from metalcore.lab.rack import Machine, RackLab, ServiceSpec
from metalcore.lab.switches import RunningConfig, Switch, SwitchLab, connect, running_config

__all__ = ["Bmc", "BmcFarm", "LabError", "Machine", "MissingPeerBinary", "NsqPeer", "ProcRecord",
           "RackLab", "RunningConfig", "ServiceSpec", "Switch", "SwitchLab", "connect", "running_config"]
