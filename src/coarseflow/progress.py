"""What a long command shows while it runs: the device, each compiling stage with its duration,
bars with the remaining time. All of it on stderr, where tqdm's bars are.

A molecule's first update or first batch of samples spends minutes in XLA's compiler, during
which a bar would sit at 0 % and then predict the rest from a rate that included the compile.
So a stage around the call that may compile says ``compiling <what> ...`` when JAX starts
tracing and its duration when done (nothing where a cache already holds the program), and
bars start after it. JAX reports compiles through ``jax.monitoring``: a start scalar and an
end duration per phase (trace, lowering, backend compile)."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

_PHASES = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND = _PHASES[-1]
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


class CompileStage:
    """What one :func:`compiling` stage saw: ``compiles`` (XLA backend compiles, loads from the
    on-disk cache included), ``compiled`` (their programs' names, e.g. 'jit(_batch)'),
    ``cache_hits`` (loaded from that cache), ``seconds`` (wall time in compile phases, nested
    ones counted once). ``names`` (fun name -> words): announce each compile of those
    functions as it comes, instead of the stage's first compile as ``what``."""

    def __init__(self, what: str, show: bool, names: dict[str, str] | None = None):
        self.what, self.show, self.names = what, show, names
        self.compiles = self.cache_hits = 0
        self.compiled: list[str] = []
        self.seconds = 0.0
        self._depth, self._since = 0, 0.0
        self._open: tuple[str, str, float, bool] | None = None  # (fun, words, since, bars)
        self.announced = False

    def started(self, event: str, fun_name: str) -> None:
        if self._depth == 0:
            self._since = time.perf_counter()
        self._depth += 1
        if not self.show or self._open is not None:
            return
        if self.names is None and not self.announced:
            self._announce("", self.what)
        elif self.names is not None and event == _PHASES[0] and fun_name in self.names:
            self._announce(f"jit({fun_name})", self.names[fun_name])

    def ended(self, event: str, fun_name: str) -> None:
        if self._depth == 0:  # a phase that began before the stage
            return
        self._depth -= 1
        if event == _BACKEND:
            self.compiles += 1
            self.compiled.append(fun_name)
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._since
        if self.names is not None and event == _BACKEND and self._open is not None:
            if fun_name == self._open[0]:
                self.finish()

    def _announce(self, program: str, words: str) -> None:
        self.announced = True
        bars = _bars_open()
        self._open = (program, words, time.perf_counter(), bars)
        _say(f"compiling {words} ...", end="\n" if bars else "")

    def finish(self) -> None:
        """Say how long the announced compile took (and that it came from the cache)."""
        if self._open is None:
            return
        _, words, since, bars = self._open
        # one call's stage: its time in compile phases, not the batch it then ran
        seconds = self.seconds if self.names is None else time.perf_counter() - since
        text = f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
        text += " (from the compilation cache)" if self.cache_hits else ""
        _say(f"compiling {words}: {text}" if bars else f" {text}")
        self._open = None


_stages: list[CompileStage] = []  # the open stages; each sees every compile
_listening = False


def _on_start(event: str, _value, fun_name: str = "", **_kwargs) -> None:
    if event in _PHASES:
        for stage in _stages:
            stage.started(event, fun_name)


def _on_end(event: str, _duration, fun_name: str = "", **_kwargs) -> None:
    if event in _PHASES:
        for stage in _stages:
            stage.ended(event, fun_name)


def _on_event(event: str, **_kwargs) -> None:
    if event == _CACHE_HIT:
        for stage in _stages:
            stage.cache_hits += 1


def _listen() -> None:
    """Register the listeners once per process; they do nothing while no stage is open."""
    global _listening
    if _listening:
        return
    import jax.monitoring

    jax.monitoring.register_scalar_listener(_on_start)
    jax.monitoring.register_event_duration_secs_listener(_on_end)
    jax.monitoring.register_event_listener(_on_event)
    _listening = True


def _bars_open() -> bool:
    return any(not bar.disable for bar in list(getattr(tqdm, "_instances", ())))


def _say(text: str, end: str = "\n") -> None:
    """Write to stderr; a whole line where a bar is drawn goes above it (tqdm.write)."""
    if end == "\n" and _bars_open():
        tqdm.write(text, file=sys.stderr)
        return
    sys.stderr.write(text + end)
    sys.stderr.flush()


@contextmanager
def compiling(what: str, show: bool = True, names: dict[str, str] | None = None):
    """Around a call that may compile: ``compiling <what> ... 41 s`` on stderr when it does
    (``show``), nothing when a cache holds the program. With ``names`` (a jitted function's
    name -> words), around a longer call: each compile of those functions said as it comes.
    Yields the :class:`CompileStage`."""
    _listen()
    stage = CompileStage(what, show, names)
    _stages.append(stage)
    try:
        yield stage
    finally:
        _stages.remove(stage)
        stage.finish()


def bar(total: int, desc: str, show: bool = True, unit: str = "sample", initial: int = 0):
    """A tqdm bar with its rate and remaining time (start it after the compiling stage, so the
    estimate is not that of the compile)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False, initial=initial)


def device_line(devices=None) -> str:
    """'device: CPU (1 device, 16 cores)' or 'device: GPU NVIDIA H100 80GB HBM3 (1 device)':
    what JAX computes on (``devices``: default jax.devices())."""
    if devices is None:
        import jax

        devices = jax.devices()
    n = len(devices)
    count = f"{n} device{'s' if n != 1 else ''}"
    if devices[0].platform == "cpu":
        return f"device: CPU ({count}, {os.cpu_count()} cores)"
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    return f"device: {devices[0].platform.upper()} {kinds} ({count})"


class Progress:
    """One bar over a command's samples, drawn in batches by several calls: each call's first
    batch inside a :func:`compiling` stage, the bar opened after the first batch (so its
    remaining time is not the compile's). ``show`` False: silent."""

    def __init__(self, total: int, desc: str, show: bool = True):
        self.total, self.desc, self.show = total, desc, show
        self._bar = None

    def compiling(self, what: str):
        return compiling(what, self.show)

    def advance(self, m: int) -> None:
        if self._bar is None:  # the rate counts from here: batches after the first
            self._bar = bar(self.total, self.desc, self.show, initial=m)
        else:
            self._bar.update(m)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
