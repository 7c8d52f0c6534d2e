"""A simulated Braiins OS+ miner: one device (device.py) behind REST API v1 (rest.py), the
gRPC API pyasic drives (grpc.py, protobuf.py) and BOSminer's 4028 (bosminer.py).
"""

from __future__ import annotations

from sim.braiins_os.bosminer import BosminerApi
from sim.braiins_os.device import BraiinsDevice, target_profile
from sim.braiins_os.family import FAMILY, model_for
from sim.braiins_os.grpc import GrpcSimServer
from sim.braiins_os.rest import RestApi, RestServer

__all__ = [
    "FAMILY",
    "BosminerApi",
    "BraiinsDevice",
    "GrpcSimServer",
    "RestApi",
    "RestServer",
    "model_for",
    "target_profile",
]
