"""Install footprint: our wheel without extras against its floor, prefect + prefect-aws + av alone.

Builds the wheel from a copy of the repository, resolves what it installs (`pip install --dry-run
--report`), and pins every resolved package, so both installs get the same versions. Then, each in a
fresh venv (no pip of its own: this pip installs into it with `--python`), without pip's cache so
neither install profits from the other:

  (a) floor:  prefect, prefect-aws and av at the versions the wheel resolved to;
  (b) wheel:  our wheel, no extras (what `pip install prefect-aimlapi-video` installs);
  (c) with --sandbox, also the wheel with the `sandbox` extra, to show what that extra costs.

Each pip install is timed (bytecode compilation included, as users get it), and each venv's
site-packages measured with `du -sb`. Target: (b) / (a) <= 1.10 in size and in time. Only pip as
configured on this machine is used (its index and find-links), nothing else from the network.
Prints the figures, then one JSON line.

    .venv/bin/python benchmarks/install_size.py [--sandbox] [--repeats N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "prefect-aimlapi-video"
FLOOR = ("prefect", "prefect-aws", "av")
TARGET_RATIO = 1.10
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "aimlapi-outputs")


def _pip(*args: str, timeout: float = 1800) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"pip {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")


def build_wheel(work: Path) -> Path:
    """The wheel, built (PEP 517, isolated) from a copy of the repository, as the integration test does."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=IGNORED)
    _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("prefect_aimlapi_video-*.whl")
    return wheel


def resolve(wheel: Path, work: Path, extras: str = "") -> dict[str, str]:
    """name -> version of everything a fresh install of the wheel (with `extras`) would bring."""
    report = work / "resolved.json"
    _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), f"{wheel}{extras}")
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def _ask(python: Path, script: str) -> str:
    """What `script` prints in that venv; isolated (-I), so no folder or PYTHON* variable of ours
    (the repository's egg-info, say) shows in its view of what is installed."""
    return subprocess.run([str(python), "-I", "-c", script], capture_output=True, text=True, check=True,
                          cwd=python.parent).stdout


def site_packages(python: Path) -> Path:
    return Path(_ask(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def installed(python: Path) -> dict[str, str]:
    script = ("import importlib.metadata as m, json; "
              "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    return json.loads(_ask(python, script))


def install(home: Path, requirements: list[str], constraints: Path) -> dict:
    """A fresh venv at `home` with `requirements` installed: seconds, site-packages bytes, packages."""
    venv.create(home, with_pip=False)
    python = home / "bin" / "python"
    started = time.perf_counter()
    _pip("--python", str(python), "install", "--quiet", "--no-cache-dir", "--constraint", str(constraints),
         *requirements)
    seconds = time.perf_counter() - started
    return {"install_seconds": round(seconds, 2), "site_packages_bytes": du_bytes(site_packages(python)),
            "packages": installed(python)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="installs of each variant (median time); default 1")
    parser.add_argument("--sandbox", action="store_true", help="also install the wheel with the sandbox extra")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (venvs, wheel)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="install-size-"))
    try:
        wheel = build_wheel(work)
        pins = resolve(wheel, work, "[sandbox]" if args.sandbox else "")
        versions = {name: pins[name] for name in FLOOR}
        constraints = work / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n != DISTRIBUTION))
        variants = {"floor": [f"{n}=={v}" for n, v in versions.items()], "wheel": [str(wheel)]}
        if args.sandbox:
            variants["wheel_sandbox"] = [f"{wheel}[sandbox]"]
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for round_ in range(args.repeats):
            for name, requirements in variants.items():  # interleaved, so drift in the machine's load hits all
                runs[name].append(install(work / f"{name}-{round_}", requirements, constraints))
                if not args.keep:
                    shutil.rmtree(work / f"{name}-{round_}")
        figures: dict = {"benchmark": "install_size", "python": sys.version.split()[0], "versions": versions,
                         "repeats": args.repeats, "target_ratio": TARGET_RATIO}
        for name, done in runs.items():
            figures[name] = {"site_packages_bytes": done[0]["site_packages_bytes"],
                             "install_seconds": round(statistics.median(r["install_seconds"] for r in done), 2),
                             "install_seconds_each": [r["install_seconds"] for r in done],
                             "packages": len(done[0]["packages"])}
        floor_packages, wheel_packages = runs["floor"][0]["packages"], runs["wheel"][0]["packages"]
        figures["wheel_adds"] = sorted(set(wheel_packages) - set(floor_packages))
        figures["size_ratio"] = round(figures["wheel"]["site_packages_bytes"] / figures["floor"]["site_packages_bytes"], 4)
        figures["time_ratio"] = round(figures["wheel"]["install_seconds"] / figures["floor"]["install_seconds"], 3)
        figures["met"] = figures["size_ratio"] <= TARGET_RATIO and figures["time_ratio"] <= TARGET_RATIO
        if args.sandbox:
            figures["sandbox_adds"] = sorted(set(runs["wheel_sandbox"][0]["packages"]) - set(wheel_packages))
            figures["sandbox_extra_bytes"] = (figures["wheel_sandbox"]["site_packages_bytes"]
                                              - figures["wheel"]["site_packages_bytes"])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"versions: {', '.join(f'{n} {v}' for n, v in versions.items())} (every package pinned alike)")
    for name in variants:
        row = figures[name]
        print(f"{name:14} site-packages {row['site_packages_bytes'] / 1e6:7.1f} MB, {row['packages']:3} packages, "
              f"pip install {row['install_seconds']:6.1f} s")
    print(f"wheel / floor: size {figures['size_ratio']:.4f}, time {figures['time_ratio']:.3f} "
          f"(target <= {TARGET_RATIO}: {'met' if figures['met'] else 'NOT met'}); "
          f"the wheel adds: {', '.join(figures['wheel_adds']) or 'nothing'}")
    if args.sandbox:
        print(f"the sandbox extra adds {figures['sandbox_extra_bytes'] / 1e6:.1f} MB: {', '.join(figures['sandbox_adds'])}")
    if args.keep:
        print(f"kept: {work}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
