"""docker-compose.yml, deploy/compose/cpu.yml, Dockerfile and .env.example checked against the
code they run.

Docker is not needed: the compose file is read with PyYAML, its ``${VAR...}`` references are
substituted the way Compose does it, and every service's command goes through our own argument
parsers, so a renamed or missing flag fails here rather than in a container. The stack brought up
for real is tests/test_compose_stack.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import sqlalchemy
import yaml

from hpo import cli
from hpo.runtime import worker
from hpo.studies.settings import SETTING_FLAGS

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "deploy" / "compose" / "cpu.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
SOURCES = [*sorted((REPO / "hpo").rglob("*.py")), *sorted((REPO / "search_spaces").rglob("*.py"))]

PASSWORD = "test-password"
# Only the required variable: every optional one takes its default or drops its flag.
DEFAULTS = {"POSTGRES_PASSWORD": PASSWORD}
# A chain with every setting given, to check each lands on the flag meant for it.
CHAIN_SET = {
    "POSTGRES_PASSWORD": PASSWORD, "HPO_CHAIN": "stage3_filters..stage8_schedule",
    "HPO_CHAIN_NAME": "night-run", "HPO_N_TRIALS": "12", "HPO_SAMPLER": "random",
    "HPO_PRUNER": "hyperband", "HPO_OBJECTIVES": "accuracy,time", "HPO_DATASET": "cifar10",
    "HPO_EPOCHS": "3", "HPO_TRAIN_SIZE": "1000", "HPO_SEED": "7", "HPO_JOBS_PER_DEVICE": "2",
    "HPO_WORKER_ARGS": "--heartbeat 5 --grace 20", "DASHBOARD_PORT": "9090",
    "POSTGRES_PORT": "6543",
}
# One stage instead of the chain: HPO_STUDY wins over the HPO_CHAIN that .env.example sets.
STUDY_SET = {**CHAIN_SET, "HPO_STUDY": "my_study", "HPO_SPACE": "stage3_filters"}


def env_example() -> dict[str, str]:
    """The variables a user gets by copying .env.example, with the password filled in."""
    values = dict(re.findall(r"^([A-Za-z_]\w*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    return {**values, "POSTGRES_PASSWORD": PASSWORD}


SCENARIOS = {"defaults": DEFAULTS, "env_example": env_example(), "chain_set": CHAIN_SET,
             "study_set": STUDY_SET}
SETTINGS = {"n_trials": "HPO_N_TRIALS", "sampler": "HPO_SAMPLER", "pruner": "HPO_PRUNER",
            "objectives": "HPO_OBJECTIVES", "dataset": "HPO_DATASET", "epochs": "HPO_EPOCHS",
            "train_size": "HPO_TRAIN_SIZE", "seed": "HPO_SEED"}


# --- compose-style substitution ---------------------------------------------------------------

class MissingVariable(Exception):
    pass


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` at start, nested ``${...}`` included."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand(body: str, env: dict[str, str]) -> str:
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, re.S)
    if not m:
        raise ValueError(f"invalid interpolation ${{{body}}}")
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    is_set = name in env
    non_empty = bool(env.get(name))
    value = env.get(name, "")
    if op is None:
        return value
    if op in (":-", "-"):
        return value if (non_empty if op == ":-" else is_set) else interpolate(arg, env)
    if op in (":?", "?"):
        if not (non_empty if op == ":?" else is_set):
            raise MissingVariable(f"{name}: {interpolate(arg, env)}")
        return value
    return interpolate(arg, env) if (non_empty if op == ":+" else is_set) else ""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?e}``, ``${VAR?e}``,
    ``${VAR:+r}``, ``${VAR+r}`` (nested) and ``$$``."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i)
            out.append(_expand(text[i + 2:end], env))
            i = end + 1
        elif m := re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1:]):
            out.append(env.get(m.group(), ""))
            i += 1 + m.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _substitute(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_substitute(v, env) for v in node]
    if isinstance(node, dict):  # compose interpolates values, never keys
        return {k: _substitute(v, env) for k, v in node.items()}
    return node


def compose_values() -> list[str]:
    """Every string value of the raw compose file (comments and keys left out)."""
    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, (dict, list)):
            for child in node.values() if isinstance(node, dict) else node:
                yield from walk(child)
    return list(walk(yaml.safe_load(COMPOSE.read_text())))


def load_compose(env: dict[str, str]) -> dict:
    return _substitute(yaml.safe_load(COMPOSE.read_text()), env)


class ComposeLoader(yaml.SafeLoader):
    """PyYAML with Compose's merge tags: ``!reset`` (drop the value) and ``!override``."""


ComposeLoader.add_constructor("!reset", lambda loader, node: ("!reset", None))
ComposeLoader.add_constructor("!override", lambda loader, node: (
    "!override", loader.construct_mapping(node) if isinstance(node, yaml.MappingNode)
    else loader.construct_sequence(node)))


def merge_override(base, override):
    """Compose's merge of an override file onto a loaded file, for mappings and the two tags."""
    if isinstance(override, tuple) and override[0] == "!reset":
        return None
    if isinstance(override, tuple) and override[0] == "!override":
        return override[1]
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            merged = merge_override(base.get(key), value)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        return out
    return override


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(DEFAULTS)


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request) -> tuple[dict[str, str], dict]:
    env = SCENARIOS[request.param]
    return env, load_compose(env)


# --- helpers --------------------------------------------------------------------------------

def console_scripts() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def argv_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _no_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A flag in a compose file is spelled out: `--epoch` must not pass for `--epochs`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)
    return parser


def parse(argv: list[str]):
    """Our own parser for argv; argparse's SystemExit on a bad flag becomes a test failure."""
    parsers = {"hpo": cli.build_parser, "hpo-worker": worker.build_parser}
    assert argv[0] in parsers, f"{argv[0]!r} is none of our programs: {sorted(parsers)}"
    try:
        return _no_abbreviations(parsers[argv[0]]()).parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{argv[0]} rejects {shlex.join(argv[1:])!r} (exit {e.code}; see stderr)")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict) -> dict[str, str]:
    """Mount target -> source, from short-syntax volume entries."""
    out = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out[entry["target"]] = entry["source"]
        else:
            source, target = entry.split(":")[:2]
            out[target] = source
    return out


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    """(host ip or None, host port) of each published port."""
    out = []
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        out.append((parts[0] if len(parts) == 3 else None, parts[-2] if len(parts) > 1 else ""))
    return out


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def code_reads_env(name: str) -> bool:
    pattern = re.compile(r"os\.(?:environ\.get|getenv)\(\s*['\"]%s['\"]|os\.environ\[\s*['\"]%s['\"]"
                         % (name, name))
    return any(pattern.search(path.read_text()) for path in SOURCES)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and line continuations joined."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD from the build context."""
    out = []
    for instr, args in dockerfile_instructions():
        if instr in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            out.append((words[:-1], words[-1]))
    return out


# --- interpolation helper -------------------------------------------------------------------

def test_interpolate_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d} ${EMPTY-d}", env) == "v d d "
    assert interpolate("${SET:+-x ${SET}} ${EMPTY:+-x} ${EMPTY+e} $SET $$SET", env) == "-x v  e v $SET"
    assert interpolate("${UNSET:-${SET:-z}}", env) == "v"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?needed}", env)


# --- services -------------------------------------------------------------------------------

def test_compose_defines_every_service(compose):
    missing = {"postgres", "setup", "worker", "dashboard"} - set(compose["services"])
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_compose_requires_postgres_password():
    uses = [u for v in compose_values() for u in re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", v)]
    assert uses, "POSTGRES_PASSWORD is never used"
    assert all(u.startswith(":?") for u in uses), f"POSTGRES_PASSWORD with a default or none: {uses}"
    with pytest.raises(MissingVariable):
        load_compose({})


def test_postgres_has_pg_isready_healthcheck(compose):
    check = compose["services"]["postgres"].get("healthcheck") or {}
    test = check.get("test")
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test or []))


def test_postgres_keeps_data_on_named_volume(compose):
    source = mounts(compose["services"]["postgres"]).get("/var/lib/postgresql/data")
    assert source in (compose.get("volumes") or {}), f"postgres data on {source!r}, not a named volume"


def test_compose_publishes_ports_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for host_ip, _ in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes a port on {host_ip or 'all interfaces'}"


def test_compose_storage_url_reaches_postgres_service(compose):
    services = compose["services"]
    pg = environment(services["postgres"])
    for name in ("setup", "worker", "dashboard"):
        url = sqlalchemy.engine.make_url(environment(services[name])["HPO_STORAGE"])
        assert url.drivername == "postgresql+psycopg2"
        assert url.host == "postgres" and (url.port or 5432) == 5432
        assert (url.username, url.password, url.database) == (
            pg["POSTGRES_USER"], PASSWORD, pg["POSTGRES_DB"]), f"{name}: credentials differ"


def test_setup_waits_for_healthy_postgres(compose):
    deps = compose["services"]["setup"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"


def runs_one_study(env: dict[str, str]) -> bool:
    return bool(env.get("HPO_STUDY"))


def test_setup_creates_the_chain_by_default_or_the_study_asked_for(scenario):
    env, doc = scenario
    args = parse(argv_of(doc["services"]["setup"]))
    if runs_one_study(env):
        assert args.command == "create-study" and args.skip_if_exists
        assert args.study == env["HPO_STUDY"] and args.space == env.get("HPO_SPACE")
    else:
        assert args.command == "create-chain"
        assert args.chain == (env.get("HPO_CHAIN") or "all")
        assert args.chain_name == (env.get("HPO_CHAIN_NAME") or "chain")
    for attr, var in SETTINGS.items():
        expected = env.get(var) or None  # unset or empty: the flag is left out
        got = getattr(args, attr)
        assert (None if got is None else str(got)) == expected, f"--{attr.replace('_', '-')}"


def test_env_example_runs_the_whole_chain():
    doc = load_compose(env_example())
    setup, work = (parse(argv_of(doc["services"][s])) for s in ("setup", "worker"))
    assert (setup.command, setup.chain, setup.chain_name) == ("create-chain", "all", "chain")
    assert (work.chain, work.study) == ("all", None)


def test_worker_joins_what_setup_created(scenario):
    env, doc = scenario
    args = parse(argv_of(doc["services"]["worker"]))
    setup = parse(argv_of(doc["services"]["setup"]))
    # hpo-worker's own rule: exactly one of --study and --chain.
    assert (args.study is None) != (args.chain is None), argv_of(doc["services"]["worker"])
    if runs_one_study(env):
        assert args.study == setup.study == env["HPO_STUDY"]
    else:
        assert (args.chain, args.chain_name) == (setup.chain, setup.chain_name)
    # Everything else comes from the stored record: a worker flag that differed would be refused.
    assert all(getattr(args, name, None) in (None, False) for name in SETTING_FLAGS)
    assert args.devices == "auto"
    assert args.jobs_per_device == int(env.get("HPO_JOBS_PER_DEVICE") or 1)
    if env.get("HPO_WORKER_ARGS"):
        assert (args.heartbeat, args.grace) == (5, 20)


def test_setup_accepts_every_shared_chain_setting():
    """create-chain stores what the workers of a chain must agree on: every such setting that
    hpo-worker takes, create-chain takes too (same flag, same value)."""
    from hpo.studies.chain import SHARED

    given = {"dataset": "cifar10-sample", "train_size": "300", "val_fraction": "0.2",
             "epochs": "2", "n_trials": "3", "sampler": "random", "pruner": "none", "seed": "1",
             "objectives": "accuracy,time", "matmul_precision": "high", "precision": "bf16"}
    for name in SHARED:
        flag = f"--{name.replace('_', '-')}"
        values = [given[name]] if name in given else []
        chain = parse(["hpo", "create-chain", flag, *values])
        work = parse(["hpo-worker", "--chain", flag, *values])
        assert getattr(chain, name) == getattr(work, name), flag


def test_worker_waits_for_setup(compose):
    deps = compose["services"]["worker"]["depends_on"]
    assert deps["setup"]["condition"] == "service_completed_successfully"


def test_worker_reserves_every_nvidia_gpu_by_default(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpu and str(gpu[0].get("count")) == "all"


def test_cpu_override_drops_only_the_gpu_reservation(scenario):
    env, doc = scenario
    override = yaml.load(CPU_OVERRIDE.read_text(), Loader=ComposeLoader)
    merged = merge_override(doc, override)
    assert "deploy" in doc["services"]["worker"]
    assert "deploy" not in merged["services"]["worker"]
    for name, service in doc["services"].items():
        rest = {k: v for k, v in service.items() if k != "deploy"}
        assert {k: v for k, v in merged["services"][name].items() if k != "deploy"} == rest, name


def test_worker_has_no_container_name(compose):
    assert "container_name" not in compose["services"]["worker"], "blocks --scale worker=N"


def test_worker_stops_gracefully(compose):
    service = compose["services"]["worker"]
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    # at least the heartbeat grace, after which other workers would fail the trial anyway
    grace = worker.build_parser().get_default("grace")
    assert seconds(str(service["stop_grace_period"])) >= grace
    assert service.get("restart") == "on-failure"


def test_worker_cache_dir_on_named_volume(compose):
    service = compose["services"]["worker"]
    cache = environment(service)["HPO_CACHE_DIR"]
    assert mounts(service).get(cache) in (compose.get("volumes") or {})


def test_dashboard_command_parses(scenario):
    env, doc = scenario
    service = doc["services"]["dashboard"]
    args = parse(argv_of(service))
    assert args.command == "dashboard" and args.host == "0.0.0.0"
    container_ports = [str(p).split(":")[-1] for p in service.get("ports") or []]
    assert str(args.port) in container_ports
    assert [port for _, port in published_ports(service)] == [env.get("DASHBOARD_PORT", "8080")]


def test_dashboard_shares_storage_and_artifacts_with_worker(compose):
    w, d = compose["services"]["worker"], compose["services"]["dashboard"]
    we, de = environment(w), environment(d)
    assert de["HPO_STORAGE"] == we["HPO_STORAGE"]
    assert de["HPO_ARTIFACTS"] == we["HPO_ARTIFACTS"]
    volume = mounts(w).get(we["HPO_ARTIFACTS"])
    assert volume in (compose.get("volumes") or {}), "artifacts not on a named volume"
    assert mounts(d).get(de["HPO_ARTIFACTS"]) == volume


def test_compose_commands_run_console_scripts(compose):
    scripts = console_scripts()
    for name, service in compose["services"].items():
        if "command" in service and "image" in service and service.get("build"):
            assert argv_of(service)[0] in scripts, f"{name} runs {argv_of(service)[0]!r}"


def test_compose_hpo_variables_are_read_by_code(compose):
    names = {k for s in compose["services"].values() for k in environment(s) if k.startswith("HPO_")}
    names |= {k for instr, args in dockerfile_instructions() if instr == "ENV"
              for k in re.findall(r"(HPO_\w+)=", args)}
    assert names, "no HPO_* variable set"
    unread = sorted(n for n in names if not code_reads_env(n))
    assert not unread, f"set but read nowhere in hpo/ or search_spaces/: {unread}"


def test_env_example_documents_every_compose_variable():
    used = {n for v in compose_values() for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", v)}
    documented = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert not used - documented, f"missing from .env.example: {sorted(used - documented)}"


def test_env_example_has_no_password():
    values = dict(re.findall(r"^([A-Za-z_]\w*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    assert values.get("POSTGRES_PASSWORD", "") == ""


# --- image ----------------------------------------------------------------------------------

def test_dockerfile_uses_python_311_slim():
    froms = [args for instr, args in dockerfile_instructions() if instr == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim"


def test_dockerfile_copies_existing_package_sources():
    copied = {Path(src).name for sources, _ in copies() for src in sources}
    packages = {p.rstrip("*") for p in tomllib.loads((REPO / "pyproject.toml").read_text())
                ["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", *packages} <= copied, f"COPY misses some of {sorted(packages)}"
    missing = [src for sources, _ in copies() for src in sources if not (REPO / src).exists()]
    assert not missing, f"COPY sources absent from the repository: {missing}"


def test_dockerfile_installs_the_package():
    workdir, dirs_with_project = "/", set()
    for instr, args in dockerfile_instructions():
        if instr == "WORKDIR":
            workdir = args
        elif instr in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if "pyproject.toml" in [Path(w).name for w in words[:-1]]:
                dest = words[-1]
                dest = dest.rstrip("/") if dest.endswith("/") else str(Path(dest).parent)
                dirs_with_project.add(dest if dest.startswith("/") else f"{workdir}/{dest}")
        elif instr == "RUN":
            for m in re.finditer(r"pip install ([^&;|]*)", args):
                targets = [w for w in shlex.split(m.group(1)) if not w.startswith("-")]
                targets = [workdir if t == "." else t.rstrip("/") for t in targets]
                if "-r" not in m.group(1) and set(targets) & {d.rstrip("/") for d in dirs_with_project}:
                    return
    pytest.fail("no `pip install` of the folder holding pyproject.toml")


def test_dockerfile_runs_as_non_root():
    users = [args.split(":")[0] for instr, args in dockerfile_instructions() if instr == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_dockerfile_makes_volume_targets_writable(compose):
    """A new named volume takes the ownership of the image's folder: the non-root user needs it."""
    chowns = " ".join(step for instr, args in dockerfile_instructions() if instr == "RUN"
                      for step in re.split(r"&&|;|\|\|", args) if step.split()[:1] == ["chown"])
    for name in ("worker", "dashboard"):
        for target, source in mounts(compose["services"][name]).items():
            if source in (compose.get("volumes") or {}):
                assert re.search(rf"(^|\s){re.escape(target)}(\s|$)", chowns), \
                    f"{target} ({name}) is not chowned in the Dockerfile"


def test_dockerfile_command_is_console_script():
    scripts = console_scripts()
    found = [(instr, args) for instr, args in dockerfile_instructions()
             if instr in ("CMD", "ENTRYPOINT")]
    assert found, "no CMD or ENTRYPOINT"
    entry = dict(found)
    program_line = entry.get("ENTRYPOINT") or entry["CMD"]
    argv = json.loads(program_line) if program_line.startswith("[") else shlex.split(program_line)
    assert argv[0] in scripts, f"{argv[0]!r} is none of {sorted(scripts)}"


def test_dockerignore_excludes_secrets_and_local_state():
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", ".git", ".venv", "hpo.db", "hpo-artifacts"} <= ignored


def dockerfile_args() -> dict[str, str]:
    """Each ARG's default, quotes removed."""
    out = {}
    for instr, args in dockerfile_instructions():
        if instr == "ARG":
            name, _, default = args.partition("=")
            out[name] = shlex.split(default)[0] if default else ""
    return out


def test_dockerfile_pins_torch_to_one_cuda_build_with_its_driver_floor():
    """torch's PyPI wheels change their CUDA build between minor releases (2.14.x: CUDA 13.0):
    the pin has an upper bound, admits the release the project is tested with, and the header
    names the CUDA build and the driver it needs."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    args = dockerfile_args()
    torch_spec = SpecifierSet(args["TORCH"].removeprefix("torch"))
    vision_spec = SpecifierSet(args["TORCHVISION"].removeprefix("torchvision"))
    assert Version("2.14.1") in torch_spec and Version("0.29.1") in vision_spec
    assert Version("2.15.0") not in torch_spec and Version("0.30.0") not in vision_spec
    assert not any(Version("3.0") in s for s in (torch_spec, vision_spec))
    runs = [a for i, a in dockerfile_instructions() if i == "RUN"]
    torch_step = next(i for i, a in enumerate(runs) if '"$TORCH"' in a and '"$TORCHVISION"' in a)
    requirements_step = next(i for i, a in enumerate(runs) if "-r /tmp/build/requirements.txt" in a)
    assert torch_step < requirements_step, "the pinned torch must be installed before the rest"
    header = DOCKERFILE.read_text().split("FROM ")[0]
    assert "CUDA 13.0" in header and "driver 580 or" in header
