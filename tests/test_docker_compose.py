"""docker-compose.yml, Dockerfile and .env.example checked against the code they run.

Docker is not needed: the compose file is read with PyYAML, its ``${VAR...}`` references are
substituted the way Compose does it, and every service's command goes through our own argument
parsers, so a renamed or missing flag fails here rather than in a container.
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

from hpo import cli, worker

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
SOURCES = [*sorted((REPO / "hpo").rglob("*.py")), *sorted((REPO / "search_spaces").rglob("*.py"))]

PASSWORD = "test-password"
# Only the required variable: every optional one takes its default or drops its flag.
DEFAULTS = {"POSTGRES_PASSWORD": PASSWORD}
# Every optional study setting given, to check each lands on the flag meant for it.
ALL_SET = {
    "POSTGRES_PASSWORD": PASSWORD, "HPO_STUDY": "my_study", "HPO_SPACE": "stage3_filters",
    "HPO_N_TRIALS": "12", "HPO_SAMPLER": "random", "HPO_PRUNER": "hyperband",
    "HPO_OBJECTIVES": "accuracy,time", "HPO_DATASET": "cifar10", "HPO_EPOCHS": "3",
    "HPO_TRAIN_SIZE": "1000", "HPO_SEED": "7", "DASHBOARD_PORT": "9090", "POSTGRES_PORT": "6543",
}
SCENARIOS = {"defaults": DEFAULTS, "all_set": ALL_SET}


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
    missing = {"postgres", "create-study", "worker", "dashboard"} - set(compose["services"])
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
    for name in ("create-study", "worker", "dashboard"):
        url = sqlalchemy.engine.make_url(environment(services[name])["HPO_STORAGE"])
        assert url.drivername == "postgresql+psycopg2"
        assert url.host == "postgres" and (url.port or 5432) == 5432
        assert (url.username, url.password, url.database) == (
            pg["POSTGRES_USER"], PASSWORD, pg["POSTGRES_DB"]), f"{name}: credentials differ"


def test_create_study_waits_for_healthy_postgres(compose):
    deps = compose["services"]["create-study"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"


def test_create_study_command_parses(scenario):
    env, doc = scenario
    args = parse(argv_of(doc["services"]["create-study"]))
    assert args.command == "create-study" and args.skip_if_exists
    assert args.study == env.get("HPO_STUDY", "stage1_layers")
    given = {"space": "HPO_SPACE", "n_trials": "HPO_N_TRIALS", "sampler": "HPO_SAMPLER",
             "pruner": "HPO_PRUNER", "objectives": "HPO_OBJECTIVES", "dataset": "HPO_DATASET",
             "epochs": "HPO_EPOCHS", "train_size": "HPO_TRAIN_SIZE", "seed": "HPO_SEED"}
    for attr, var in given.items():
        expected = env.get(var) or None  # unset: the flag is left out
        got = getattr(args, attr)
        assert (None if got is None else str(got)) == expected, f"--{attr.replace('_', '-')}"


def test_worker_command_parses(scenario):
    env, doc = scenario
    args = parse(argv_of(doc["services"]["worker"]))
    assert args.study == env.get("HPO_STUDY", "stage1_layers")
    assert args.study == parse(argv_of(doc["services"]["create-study"])).study
    assert args.devices == "auto"


def test_worker_waits_for_created_study(compose):
    deps = compose["services"]["worker"]["depends_on"]
    assert deps["create-study"]["condition"] == "service_completed_successfully"


def test_worker_reserves_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpu and str(gpu[0].get("count")) == "1"


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
