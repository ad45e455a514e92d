"""A local stand-in for OpenRouter's chat-completions API with deterministic answers and fault injection."""

from omni_simulator.app import build_app
from omni_simulator.server import RunningSimulator, running_simulator
from omni_simulator.state import FaultMatch, FaultSpec, SimulatorState

__all__ = [
    "FaultMatch",
    "FaultSpec",
    "RunningSimulator",
    "SimulatorState",
    "build_app",
    "running_simulator",
]
