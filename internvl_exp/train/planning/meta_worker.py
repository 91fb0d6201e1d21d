"""Build the planner's model on the meta device in a second process that starts importing at once.

A first plan of a model spends ~9 s importing torch and transformers' modeling and ~1 s composing its config
(Hydra, our schema). They do not depend on each other, so `tools.plan` starts a `MetaWorker` before it
composes: the worker imports while the config composes, then builds the preset the config names and answers
with its `ModelSummary`. The plan waits for the slower of the two instead of their sum, and not for the
worker's exit (it is stopped once it has answered). A cached summary (`memory_plan.model_summary`) needs no
worker: `close()` stops it unasked.

Protocol: one JSON line in on stdin ({"model": ..., "freeze": ...}, resolved), one JSON line out on stdout
({"summary": ...} or {"error": {"type", "message"}}); EOF instead of a request ends the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from internvl_exp import errors
from internvl_exp.config.schema import Config
from internvl_exp.errors import UserError
from internvl_exp.train.planning.memory_plan import ModelSummary, model_summary


def serve() -> int:
    """The worker: import the heavy modules now, then answer one request."""
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever the libraries print must not corrupt the answer
    import torch  # noqa: F401  (the point: import while the caller composes)
    import transformers.modeling_utils  # noqa: F401
    from omegaconf import OmegaConf

    line = sys.stdin.readline()
    if not line:  # the caller found its summary in the cache, or gave up
        return 0
    try:
        answer = {"summary": model_summary(OmegaConf.create(json.loads(line)), cache=False).to_json()}
    except UserError as e:
        answer = {"error": {"type": type(e).__name__, "message": str(e)}}
    except Exception:  # noqa: BLE001  (a bug: the caller raises it with this traceback)
        import traceback

        answer = {"error": {"type": "RuntimeError", "message": traceback.format_exc()}}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


class MetaWorker:
    """One meta-device build in a fresh interpreter (none of the caller's state, whatever its __main__)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)

    def summary(self, cfg: Config):
        """The ModelSummary of the preset and freeze/LoRA config of `cfg` (a composed config)."""
        from omegaconf import OmegaConf

        request = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "freeze", "resolved")}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError:  # BrokenPipeError: it died before reading the request
            line = ""
        finally:
            self.close()
        if not line:
            raise RuntimeError(f"the planner's model-building process died (exit status {self._proc.returncode}); "
                               "its messages are above")
        answer = json.loads(line)
        if "error" in answer:
            err = answer["error"]
            cls = getattr(errors, err["type"], None)
            if isinstance(cls, type) and issubclass(cls, errors.UserError):
                raise cls(err["message"])
            raise RuntimeError(f"building the model on the meta device failed:\n{err['message']}")
        return ModelSummary.from_json(answer["summary"])

    def close(self) -> None:
        """Stop the worker: still importing (its answer is not needed) or done (its exit would take ~2 s)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(serve())
