"""A real OpenAI-compatible LLM server for tests and benchmarks: `transformers serve` (from PyPI, on
the CPU) running a tiny LLaMA that is built here from a config, with a BPE tokenizer trained here.
Nothing is downloaded at build or run time.

Two halves in one file:

* Run as a script by the LLM venv's Python (the main venv has no transformers), it builds the model
  directory; the same arguments give the same bytes (seeded weights, a fixed training corpus)::

      .tools/llm-venv/bin/python tests/support/tinyllm.py build OUT [--layers 2] [--hidden 64]

* Imported from the main venv (standard library only at import), it finds the venv, builds a model
  through that script (`build_model`), and starts and stops the server (`TransformersServe`)::

      with TransformersServe(model_dir) as server:        # port 0: uvicorn's bound port, read back
          server.url, server.model                         # model id = the directory path as given

The venv is `.tools/llm-venv`, installed by `bash .ci/install-tools.sh`. Tests call
`require_llm_venv()`: it skips with the reason on a developer's machine and fails under CI=true,
where a missing server must never pass as a skip.

What the model does, so tests can rely on it: greedy decoding (the same prompt gives the same
text), and every special token and every token that is not printable ASCII is suppressed in its
generation config, so it never stops before `max_tokens` (finish_reason "length") and each
generated token decodes to visible text: one streamed content event per token.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[2]
LLM_VENV = REPO / ".tools" / "llm-venv"
LLM_PYTHON = LLM_VENV / "bin" / "python"
TRANSFORMERS_CLI = LLM_VENV / "bin" / "transformers"
INSTALL_HINT = "bash .ci/install-tools.sh --no-apt installs it into .tools/llm-venv"

# Enough positions for the longest prompt a test or benchmark sends plus its output (RoPE: the
# size of the weights does not depend on it).
MAX_POSITIONS = 8192
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# A plain role-prefixed template: what matters is that chat requests go through one, so the
# server's prompt count differs from the raw text's, as with real chat models.
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
# The training text: common English words. Each becomes one token of the 512-token vocabulary;
# other words split into several byte-level pieces, as rare words do in a real BPE vocabulary.
CORPUS_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more "
    "can out up about into them than only other time new some could these two may first then do "
    "any like my now over such our man me even most made after also did many before must through "
    "model server warm cold start latency token request stream batch prompt cache kernel graph "
    "memory load test ready gate probe deploy scale replica traffic"
)
CORPUS_WORDS = CORPUS_TEXT.split()

# How long a server may take from exec to answering /health: importing torch and transformers
# and loading the model take 5-15 s on an idle 2-core machine; under a parallel test run, more.
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
# Matches uvicorn's "Uvicorn running on http://127.0.0.1:PORT" (with --port 0, the bound port).
LISTENING = re.compile(r"Uvicorn running on (http://[\d.]+:(\d+))")


# ---- building the model (runs inside the LLM venv) -----------------------------------------


def training_corpus(lines: int = 2000, seed: int = 0) -> list[str]:
    """A fixed pseudo-random corpus: the same on every machine (no `random` state shared)."""
    state = seed * 2654435761 + 1
    out = []
    for _ in range(lines):
        words = []
        for _ in range(16):
            state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
            words.append(CORPUS_WORDS[(state >> 33) % len(CORPUS_WORDS)])
        out.append(" ".join(words))
    return out


def printable_ascii(text: str) -> bool:
    return bool(text) and all(" " <= ch <= "~" for ch in text)


def build(out: Path, *, layers: int, hidden: int, seed: int) -> None:
    # Imported here: only the LLM venv has them.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    # Byte-level: any text a client sends tokenises (no <unk>), whatever its characters.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(seed=seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    # Special tokens would end the answer early or stream nothing (they are skipped when
    # decoding); a byte that is not printable ASCII streams nothing until a UTF-8 sequence
    # completes. Suppressing both makes every generated token one visible streamed event.
    special = set(fast.all_special_ids)
    suppressed = [
        token_id
        for token_id in range(len(fast))
        if token_id in special or not printable_ascii(fast.decode([token_id]))
    ]
    model.generation_config = GenerationConfig(
        do_sample=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
        suppress_tokens=suppressed,
    )
    model.save_pretrained(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny LLaMA (run with the LLM venv's python)")
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write the model and tokenizer into OUT")
    build_parser.add_argument("out", type=Path)
    build_parser.add_argument("--layers", type=int, default=2)
    build_parser.add_argument("--hidden", type=int, default=64)
    build_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, layers=args.layers, hidden=args.hidden, seed=args.seed)
    print(f"built {args.out}", flush=True)
    return 0


# ---- using it from the main venv -----------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def llm_venv_missing() -> str | None:
    """Why the LLM server cannot run here, or None when it can."""
    for path in (LLM_PYTHON, TRANSFORMERS_CLI):
        if not os.access(path, os.X_OK):
            return f"`transformers serve` is not installed ({path} missing; {INSTALL_HINT})"
    return None


def require_llm_venv() -> None:
    """Skip the calling test when the LLM venv is missing; under CI=true, fail it instead."""
    import pytest

    reason = llm_venv_missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def offline_env(home: Path | None = None) -> dict[str, str]:
    """The environment for anything run in the LLM venv: no network, and a private HF cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARMGATE_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["HF_HOME"] = str(home)
    return env


def build_model(out: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0, timeout: float = 300) -> Path:
    """Build the tiny model into `out` with the LLM venv's Python; returns `out`."""
    argv = [str(LLM_PYTHON), str(SCRIPT), "build", str(out), "--layers", str(layers)]
    argv += ["--hidden", str(hidden), "--seed", str(seed)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=offline_env(out.parent / "hf-home"),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny model failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return out


def serve_argv(model_dir: Path, port: int, *extra: str) -> list[str]:
    """`transformers serve` pinned to the model (the model id in requests is str(model_dir))."""
    return [
        str(TRANSFORMERS_CLI), "serve", str(model_dir), "--device", "cpu",
        "--host", "127.0.0.1", "--port", str(port), *extra,
    ]  # fmt: skip


def serve_env(model_dir: Path, threads: int | None = 1) -> dict[str, str]:
    """Offline, with torch's intra-op threads capped (None: torch's default, one per core)."""
    env = offline_env(model_dir.parent / "hf-home")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, ValueError):
        return 0, b""


class TransformersServe:
    """`transformers serve` on loopback, in its own process group; a context manager.

    With port 0 (the default) uvicorn binds a free port and logs it; the port is read back from
    that line, so no port race. Ready means /health answered 200 (the model is loaded before
    uvicorn starts listening, because the server is pinned to it).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        port: int = 0,
        threads: int | None = 1,
        extra_args: tuple[str, ...] = (),
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.model_dir = model_dir
        self.model = str(model_dir)
        self.argv = serve_argv(model_dir, port, *extra_args)
        self.env = serve_env(model_dir, threads)
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._lock = threading.Lock()
        self.popen: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> TransformersServe:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            with self._lock:
                self.lines.append(line)
            match = LISTENING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()  # EOF: the waiter sees the exit

    def start(self) -> None:
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout_s
        self._listening.wait(timeout=self.start_timeout_s)
        if not self.url:
            raise RuntimeError(self._failure("never logged its listening address"))
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(self._failure(f"exited with {self.popen.returncode}"))
            if http_get(self.url + "/health", timeout=1.0)[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(self._failure(f"/health not 200 within {self.start_timeout_s:g}s"))

    def _failure(self, what: str) -> str:
        return f"transformers serve {what}; argv {self.argv}; output:\n{self.output[-4000:]}"

    def stop(self) -> int | None:
        """TERM the group, wait, then KILL it; returns the exit code."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        code = popen.wait(STOP_GRACE_S)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if popen.stdout is not None and not (self._reader and self._reader.is_alive()):
            popen.stdout.close()
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
