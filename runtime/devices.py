"""Runtime devices: what runs the code a backend generated, named by `Target.device`.

"cpu" is built in: the backend's object file is linked into a shared library and loaded
(ubique/build.py, with the compile cache), or run under the target's emulator when this
machine cannot run it (runtime/emulator.py). Another device (a GPU) registers a `Device`
whose `load(program)` returns an object with `run(*arrays) -> list[np.ndarray]`,
`signature` and `contract`, like runtime.executable.Executable; packages register through
the `ubique.devices` entry-point group (name = a Device subclass or instance).
"""
from __future__ import annotations

import abc
import importlib

from ubique.errors import PluginError, UnsupportedOpError
from ubique.targets import plugins


class Device(abc.ABC):
    name: str = ""
    #: whether it runs the hand-written kernels of custom ops the target's backend includes
    #: (a device that emulates another runs the generated kernels instead)
    runs_hand_kernels: bool = True

    @abc.abstractmethod
    def load(self, program):
        """A runnable for a compiled Program (see the module docstring)."""


_DEVICES: dict[str, Device] = {}

plugins.undoable_dicts(_DEVICES)  # a broken plug-in's registrations are taken back


def register_device(device, origin: str = "") -> Device:
    where = origin or getattr(device, "__module__", "?")
    if isinstance(device, type):
        missing = sorted(getattr(device, "__abstractmethods__", ()))
        if not issubclass(device, Device) or missing:
            raise PluginError(f"{where}: {device.__qualname__} must subclass ubique.runtime.devices.Device and "
                              f"implement load()")
        device = device()
    if not isinstance(device, Device) or not device.name:
        raise PluginError(f"{where}: {device!r} is not a named ubique.runtime.devices.Device")
    _DEVICES[device.name] = device
    plugins.note_change()
    return device


# built-in devices, imported when first asked for
BUILTIN = {"cuda": "ubique.runtime.cuda", "cuda-emulator": "ubique.runtime.cuda"}


def _load_builtin(name: str) -> None:
    if name in BUILTIN and name not in _DEVICES:
        importlib.import_module(BUILTIN[name])


@plugins.on_load("ubique.devices")
def _register_plugin(name: str, obj, where: str) -> None:
    _load_builtin(name)
    if name in _DEVICES or name == "cpu":  # a plug-in never replaces a device silently
        raise PluginError(f"{where}: device name {name!r} is already taken")
    register_device(obj, where)


def get_device(name: str, target=None) -> Device:
    """The device registered as `name` (not "cpu", which the runtime runs itself)."""
    _load_builtin(name)
    if name not in _DEVICES:
        plugins.load_group("ubique.devices", name)
    if name not in _DEVICES:
        whose = f"target {target.name!r} runs on device {name!r}" if target is not None else f"device {name!r}"
        raise UnsupportedOpError(f"{whose}, which has no runtime here; registered devices: cpu"
                                 + "".join(f", {d}" for d in sorted(_DEVICES))
                                 + ". Install the plug-in that provides it")
    return _DEVICES[name]
