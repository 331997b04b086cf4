"""A real `flagshare serve` for tests and benchmarks: on 127.0.0.1:0, with a fresh
development PKI in the data folder it is given."""

import os
import pathlib
import re
import subprocess
import threading

REPO = pathlib.Path(__file__).resolve().parents[3]


def flagshare_binary() -> pathlib.Path:
    """FLAGSHARE_BIN, or the debug build in CARGO_TARGET_DIR or the checkout's target/."""
    candidates = []
    if os.environ.get("FLAGSHARE_BIN"):
        candidates.append(pathlib.Path(os.environ["FLAGSHARE_BIN"]))
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(pathlib.Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "flagshare")
    candidates.append(REPO / "target" / "debug" / "flagshare")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        "no flagshare binary: build it with `scripts/cargo build` or set FLAGSHARE_BIN "
        f"(looked at {', '.join(map(str, candidates))})"
    )


class Server:
    def __init__(self, data: pathlib.Path):
        self.binary = flagshare_binary()
        self.data = data
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()
        self.port = None

        def read_stderr():
            for line in self.process.stderr:
                match = re.search(r"listening on \S+:(\d+)", line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                    found.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        if not found.wait(timeout=60):
            self.process.kill()
            raise RuntimeError("flagshare serve did not print its address within 60 s")
        self.endpoint = f"https://127.0.0.1:{self.port}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True, check=check, timeout=60)

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        bundle = self.data / "clients" / "admin"
        return self.run("admin", "--bundle", str(bundle), "--endpoint", self.endpoint, *args)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
