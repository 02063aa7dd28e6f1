"""Loading the entry script (Azure ML's ``init()`` / ``run(raw_data)`` contract).

``--tensorflow-compat v1`` lets a TensorFlow 1 entry script (``import tensorflow as tf`` then
``tf.Session``, ``tf.train.import_meta_graph``...) run unchanged on TensorFlow 2. It is scoped to
the user's code: a ``sys.meta_path`` finder claims only modules whose source file lies under
``--source-dir`` (the entry script and its sibling modules) and executes them with their own
``__builtins__`` whose ``__import__`` answers ``tensorflow`` with ``tensorflow.compat.v1`` (after
``disable_v2_behavior()``). TensorFlow itself, azureml-core and every other library keep seeing the
real ``tensorflow`` module, and ``sys.modules["tensorflow"]`` is never replaced. Dotted imports
such as ``import tensorflow.compat.v1 as tf`` are passed through untouched.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from controller.scoring.options import ScoringOptions

# TensorFlow 1 sessions execute their ops in the thread that calls ``Session.run`` rather than on
# TensorFlow's inter-op pool (a negative ``TF_NUM_INTEROP_THREADS`` is TensorFlow's own switch for
# that). In a scoring host that thread is a run() slot, and concurrency comes from the slots: for the
# small per-request graphs of entry scripts the pool's hand-offs cost more than the ops (on the
# walk-through's model one run() drops from ~180 to ~120 µs, see benchmarks/README.md). TF2 eager
# and ``tf.function`` code is unaffected. An explicit value (an Environment's
# ``environmentVariables``, or the session's own ``ConfigProto``) wins.
TENSORFLOW_DEFAULTS = {"TF_NUM_INTEROP_THREADS": "-1"}


def apply_tensorflow_defaults(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set the scoring host's TensorFlow defaults where ``environ`` has no value; returns those set."""
    applied = {}
    for name, value in TENSORFLOW_DEFAULTS.items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    return applied


@dataclass(frozen=True)
class EntryPoint:
    """The callables of a loaded entry script."""

    init: Callable[[], Any]
    run: Callable[[str], Any]
    run_batch: Callable[[list[str]], Sequence[Any]] | None
    module: ModuleType | None


def aliasing_builtins(aliases: dict[str, ModuleType]) -> dict[str, Any]:
    """A copy of ``builtins`` whose ``__import__`` returns ``aliases[name]`` for those top-level names."""
    real_import = builtins.__import__

    def aliased_import(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        if level == 0 and name in aliases:
            return aliases[name]
        return real_import(name, globals, locals, fromlist or (), level)

    namespace = dict(vars(builtins))
    namespace["__import__"] = aliased_import
    return namespace


class _AliasingLoader(importlib.machinery.SourceFileLoader):
    """Executes a user module with the aliasing ``__builtins__`` instead of the real ones."""

    def __init__(self, fullname: str, path: str, namespace: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._namespace = namespace

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self._namespace
        super().exec_module(module)


class SourceDirFinder(importlib.abc.MetaPathFinder):
    """Claims modules found under ``source_dir`` so they load through :class:`_AliasingLoader`."""

    def __init__(self, source_dir: str, namespace: dict[str, Any]) -> None:
        self._root = os.path.join(os.path.abspath(source_dir), "")
        self._namespace = namespace

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, list(path) if path else [self._root])
        origin = spec.origin if spec else None
        if spec is None or not origin or not origin.startswith(self._root) or not origin.endswith(".py"):
            return None
        spec.loader = _AliasingLoader(fullname, origin, self._namespace)
        return spec


def tensorflow_v1_namespace() -> dict[str, Any]:
    """Builtins where ``import tensorflow`` gives ``tensorflow.compat.v1`` in graph mode."""
    import tensorflow  # the one deliberate TensorFlow import of compat mode

    v1 = tensorflow.compat.v1
    v1.disable_v2_behavior()
    return aliasing_builtins({"tensorflow": v1})


def load_entry_script(path: str, source_dir: str, tensorflow_compat: str) -> EntryPoint:
    """Import the entry script at ``path`` (with ``source_dir`` first on ``sys.path``)."""
    if source_dir not in sys.path:
        sys.path.insert(0, source_dir)
    name = os.path.splitext(os.path.basename(path))[0]
    loader: importlib.machinery.SourceFileLoader
    if tensorflow_compat == "v1":
        namespace = tensorflow_v1_namespace()
        sys.meta_path.insert(0, SourceDirFinder(source_dir, namespace))
        loader = _AliasingLoader(name, path, namespace)
    else:
        loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import entry script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    init = getattr(module, "init", None)
    run = getattr(module, "run", None)
    run_batch = getattr(module, "run_batch", None)
    if not callable(run) and not callable(run_batch):
        raise AttributeError(f"entry script {path} defines neither run(raw_data) nor run_batch(list)")
    if not callable(run):
        batch_only: Callable[[list[str]], Sequence[Any]] = run_batch  # type: ignore[assignment]

        def run(raw: str) -> Any:
            return batch_only([raw])[0]

    return EntryPoint(
        init=init if callable(init) else (lambda: None),
        run=run,
        run_batch=run_batch if callable(run_batch) else None,
        module=module,
    )


def load_entry(options: ScoringOptions) -> EntryPoint:
    """The entry script named by the options, or the built-in SavedModel scorer without one."""
    working_dir = options.working_dir
    if working_dir:
        os.chdir(working_dir)
    entry_path = options.entry_path
    if entry_path is None:
        from controller.scoring.savedmodels import SavedModelScorer

        if not options.model_dir:
            raise ValueError("without --entry-script, --model-dir must name a folder with a SavedModel")
        return SavedModelScorer(options.model_dir).entry_point()
    return load_entry_script(entry_path, working_dir or os.path.dirname(entry_path), options.tensorflow_compat)
