"""Where models may be loaded from, which formats may run code, and which model classes.

A model file in pickle, joblib or TorchScript form (and a Beam handler that loads such files)
runs code when it is loaded, so whoever can write the file can run code in the worker. A
``LoadPolicy`` therefore allows those formats only from *trusted roots*, allows every model
only from *model roots* (when any are set), and lets a PyTorch ``state_dict`` name only model
classes under allowed module prefixes (importing a module runs its code). Which formats run
code, and which option names a class, each framework declares (``inferbridge.frameworks``).

A path is checked before anything is opened, and a local file again by the descriptor it was
opened with (``inferbridge.model_files``).

The expansion service reads the policy from the environment (``LoadPolicy.from_env``) or from
its flags; a Python pipeline that runs its own code anyway may use ``LoadPolicy.unrestricted()``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from inferbridge import frameworks
from inferbridge.bounds import shorten

if TYPE_CHECKING:
    from inferbridge.spec import Model

# Each variable holds a comma-separated list (commas, not os.pathsep, because URIs such as
# gs://bucket/dir and class paths such as pkg.mod:Net contain colons).
MODEL_ROOTS_ENV = "INFERBRIDGE_MODEL_ROOTS"
TRUSTED_ROOTS_ENV = "INFERBRIDGE_TRUSTED_MODEL_ROOTS"
ALLOWED_CLASSES_ENV = "INFERBRIDGE_ALLOWED_MODEL_CLASSES"
ALLOWED_ENDPOINTS_ENV = "INFERBRIDGE_ALLOWED_ENDPOINTS"
ALLOWED_HANDLERS_ENV = "INFERBRIDGE_ALLOWED_REGISTERED_HANDLERS"
# In any of the three lists: anything is allowed.
ANY = "*"

# The expansion service's flags on where models and their classes come from, with their help;
# inferbridge-local passes the same flags through to the service it starts.
MODEL_SOURCE_FLAGS = {
    "--model-root": "models must be under one of these (repeatable; default: anywhere)",
    "--trusted-model-root": "pickle, joblib and TorchScript models, which run code when loaded, may be loaded "
    "from here (repeatable; default: nowhere)",
    "--allow-model-class": "PyTorch model classes may be imported from modules under this prefix (repeatable; "
    "default: none)",
    "--allow-endpoint": "endpoint models may call URLs under this prefix, e.g. https://models.internal/v1/ "
    "(repeatable; default: none)",
    "--allow-registered-handler": "models may name this handler that an installed package registers "
    "(repeatable; default: none)",
    "--python-path": "put this directory first on the import path of the service, its expansion processes and "
    "its embedded or PROCESS workers, for PyTorch model classes and --import modules (repeatable)",
}

# Each field of LoadPolicy: the service's flag that sets it (with the form of its value) and
# the environment variable.
_FIELD_SOURCES = {
    "model_roots": ("--model-root", " DIR", MODEL_ROOTS_ENV),
    "trusted_roots": ("--trusted-model-root", " DIR", TRUSTED_ROOTS_ENV),
    "allowed_model_classes": ("--allow-model-class", "=PREFIX", ALLOWED_CLASSES_ENV),
    "allowed_endpoints": ("--allow-endpoint", "=PREFIX", ALLOWED_ENDPOINTS_ENV),
    "allowed_registered_handlers": ("--allow-registered-handler", "=NAME", ALLOWED_HANDLERS_ENV),
}
FIELD_FLAGS = {name: f"{flag} (${env})" for name, (flag, _, env) in _FIELD_SOURCES.items()}


def as_flags(message: str) -> str:
    """A LoadPolicy error as the service's user reads it: the flags, not the fields."""
    for name, flag in FIELD_FLAGS.items():
        message = message.replace(f"LoadPolicy.{name} ", f"{flag} ")
    return message


_SCHEME = re.compile(r"^([A-Za-z][-A-Za-z0-9+.]*)://")


def _parsed_url(url: Any, field: str) -> tuple[str, str, int, tuple[str, ...]]:
    """(scheme, host, port, path segments) of an http(s) URL; ValueError naming ``field``."""
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError(f"{field} is not a URL; allowed: http:// or https:// URLs without spaces")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field} holds user information; allowed: URLs without it (use bearer_token_env)")
    # Servers differ in what they decode (%2f, %2e, "\\", "..;"): a path is taken only as plain
    # segments, so that a prefix means the same to the check and to every server.
    if any(c in parts.path for c in "%\\;"):
        raise ValueError(f"{field} holds '%', '\\' or ';' in its path; allowed: plain paths")
    segments = tuple(s for s in parts.path.split("/") if s)
    if ".." in segments or "." in segments:
        raise ValueError(f"{field} holds a '.' or '..' path segment; allowed: plain paths")
    try:
        port = parts.port if parts.port is not None else (443 if parts.scheme.lower() == "https" else 80)
        if port == 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{field} has an invalid port") from None
    return parts.scheme.lower(), parts.hostname.lower(), port, segments


def _under_prefix(url: tuple[str, str, int, tuple[str, ...]], prefix: tuple[str, str, int, tuple[str, ...]]) -> bool:
    return url[:3] == prefix[:3] and url[3][: len(prefix[3])] == prefix[3]


class OutsideRoots(ValueError):
    """A model file or watch pattern outside the roots the policy allows for it."""


@dataclass(frozen=True)
class LoadPolicy:
    """What models may be loaded.

    ``model_roots``: local directories or URI prefixes (``gs://bucket/models``) every model must
    be under; empty means anywhere. Trusted roots count as model roots too.
    ``trusted_roots``: where formats that run code on load may come from; empty means nowhere,
    so those formats are refused.
    ``allowed_model_classes``: module prefixes (``mypkg.models``) a PyTorch ``model_class`` must
    be under; empty means none, so ``state_dict`` models are refused.
    ``allowed_endpoints``: URL prefixes (``https://models.internal/v1/``) an endpoint model may
    call; empty means none, so endpoint models are refused.
    ``allowed_registered_handlers``: names of the handlers installed packages register that
    models may name; empty means none.
    ``ANY`` (``"*"``) in a list allows everything for that list.
    """

    model_roots: tuple[str, ...] = ()
    trusted_roots: tuple[str, ...] = ()
    allowed_model_classes: tuple[str, ...] = ()
    allowed_endpoints: tuple[str, ...] = ()
    allowed_registered_handlers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "model_roots", "trusted_roots", "allowed_model_classes", "allowed_endpoints", "allowed_registered_handlers"
        ):
            value = getattr(self, name)
            items = (value,) if isinstance(value, str) else tuple(value)
            for item in items:
                if not isinstance(item, str) or not item.strip():
                    raise ValueError(
                        f"LoadPolicy.{name} holds {item!r}; entries must be non-empty strings"
                    )
            object.__setattr__(self, name, tuple(item.strip() for item in items))
        for prefix in self.allowed_endpoints:
            if prefix != ANY:
                _parsed_url(prefix, f"LoadPolicy.allowed_endpoints holds {prefix!r}, which")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> LoadPolicy:
        """The policy named by INFERBRIDGE_MODEL_ROOTS, INFERBRIDGE_TRUSTED_MODEL_ROOTS,
        INFERBRIDGE_ALLOWED_MODEL_CLASSES, INFERBRIDGE_ALLOWED_ENDPOINTS and
        INFERBRIDGE_ALLOWED_REGISTERED_HANDLERS, each comma-separated; unset means empty."""
        env = os.environ if environ is None else environ

        def entries(name: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

        return cls(
            entries(MODEL_ROOTS_ENV),
            entries(TRUSTED_ROOTS_ENV),
            entries(ALLOWED_CLASSES_ENV),
            entries(ALLOWED_ENDPOINTS_ENV),
            entries(ALLOWED_HANDLERS_ENV),
        )

    @classmethod
    def unrestricted(cls) -> LoadPolicy:
        """Everything allowed: for Python pipelines, whose author runs their own code anyway."""
        return cls(
            trusted_roots=(ANY,), allowed_model_classes=(ANY,), allowed_endpoints=(ANY,), allowed_registered_handlers=(ANY,)
        )

    def check(self, model: Model, uri: str, where: str = "model") -> None:
        """Raises ValueError, starting with ``where``, if ``model`` may not be loaded from ``uri``.

        Local paths are compared after resolving ``..`` and symbolic links; a URI with a scheme
        is compared as text and may not contain ``..`` segments. A path outside the roots is
        refused in the same words whether or not it exists.
        """
        self._check_location(model, uri, _location(uri, f"{where}.uri"), where)

    def check_endpoint(self, url: str, where: str = "model") -> None:
        """Raises ValueError, starting with ``where``, unless ``url`` is an http(s) URL under an
        allowed endpoint prefix. Compared as parsed: scheme and host lowercased, no user info, no
        ``..`` segments, and a prefix matches whole path segments only."""
        field = f"{where}.uri={shorten(url)}"
        parsed = _parsed_url(url, field)
        allowed = [p for p in self.allowed_endpoints if p == ANY or _under_prefix(parsed, _parsed_url(p, "prefix"))]
        if not allowed:
            raise OutsideRoots(
                f"{field} is not under an allowed endpoint ({_listing(self.allowed_endpoints)}); "
                f"to allow it, {_ways_to_allow('its URL prefix', 'allowed_endpoints')}"
            )

    def check_registered_handler(self, name: str, where: str = "model") -> None:
        """Raises ValueError unless models may name the registered handler ``name``."""
        allowed = self.allowed_registered_handlers
        if ANY not in allowed and name not in allowed:
            raise ValueError(
                f"{where}.format={shorten(name)}: the registered handler is not allowed ({_listing(allowed)}); to "
                f"allow it, {_ways_to_allow('its name', 'allowed_registered_handlers')}"
            )

    def check_opened(self, model: Model, uri: str, real_path: str, where: str = "model") -> None:
        """Like ``check``, for the local file ``uri`` once opened: ``real_path`` is where its
        descriptor leads, so a link switched after ``check`` cannot lead elsewhere."""
        self._check_location(model, uri, (None, real_path), where)

    def allows(self, model: Model, uri: str) -> bool:
        """Whether ``check`` would accept the location ``uri`` for ``model``, without raising."""
        try:
            return self._allows(model, _location(uri, "uri"))
        except ValueError:
            return False

    def check_watch_directory(self, model: Model, pattern: str, directory: str, where: str) -> None:
        """Raises ValueError unless ``directory``, of ``model``'s watch pattern, is where the
        model itself may be loaded from (the trusted roots for formats that run code)."""
        if not self._allows(model, _location(directory, f"{where}.watch_pattern")):
            raise OutsideRoots(
                f"{where}.watch_pattern={pattern!r} is outside the roots its model may be loaded "
                f"from ({_listing(self._roots_for(model) or ())}); give a pattern whose directory "
                "is under one of them"
            )

    def _roots_for(self, model: Model) -> Optional[tuple[str, ...]]:
        """The roots ``model`` may be loaded from; None: anywhere."""
        if frameworks.runs_code_on_load(model):
            return self.trusted_roots
        return self.model_roots + self.trusted_roots if self.model_roots else None

    def _allows(self, model: Model, location: tuple[Optional[str], str]) -> bool:
        roots = self._roots_for(model)
        return roots is None or _under_any(location, roots)

    def _check_location(self, model: Model, uri: str, location: tuple[Optional[str], str], where: str) -> None:
        # Only the configured value is named: a resolved path would tell a client where a link
        # outside the roots leads, and whether it exists.
        if not self._allows(model, location):
            roots = _listing(self._roots_for(model) or ())
            if frameworks.runs_code_on_load(model):
                raise OutsideRoots(
                    f"{where}.uri={uri!r}: {model.framework} format {model.format!r} runs code "
                    f"when loaded, so it is loaded only from trusted roots ({roots}); to allow "
                    f"it, put the file under a directory you trust and "
                    f"{_ways_to_allow('that directory', 'trusted_roots')}; "
                    f"or save the model in a format that does not run code ({_safe_formats()}){relative_path_hint(uri)}"
                )
            raise OutsideRoots(
                f"{where}.uri={uri!r} is outside the allowed model roots ({roots}); to allow it, "
                f"{_ways_to_allow('its directory', 'model_roots')}{relative_path_hint(uri)}"
            )
        class_option = frameworks.class_to_import(model)
        if class_option is not None and isinstance(class_option[1], str):
            self.check_model_class(class_option[1], f"{where}.options.{class_option[0]}")

    def check_model_class(self, model_class: str, where: str) -> None:
        """Raises ValueError unless ``model_class`` ("pkg.mod:Class") is under an allowed prefix."""
        dotted = model_class.replace(":", ".")
        for prefix in self.allowed_model_classes:
            prefix = prefix.replace(":", ".").rstrip(".")
            if prefix == ANY or dotted == prefix or dotted.startswith(prefix + "."):
                return
        module = model_class.split(":")[0] if ":" in model_class else model_class.rpartition(".")[0]
        raise ValueError(
            f"{where}={model_class!r} is not under an allowed model class prefix "
            f"({_listing(self.allowed_model_classes)}); importing it would run its module's code. "
            f"To allow it, {_ways_to_allow(f'{module!r} (or a parent package)', 'allowed_model_classes')}"
        )


def _ways_to_allow(what: str, field: str) -> str:
    """How to allow ``what`` in the policy's ``field``: for the expansion service (and Python
    pipelines without a policy of their own), and in a Python pipeline's own policy, which
    replaces the environment's."""
    flag, value, env = _FIELD_SOURCES[field]
    return (
        f"add {what} to {env} (comma-separated) or give the expansion service (or inferbridge-local) "
        f"{flag}{value}; in a Python pipeline given policy=LoadPolicy(...), which replaces the "
        f"environment's, add it to the policy's {field}"
    )


def local_path(uri: str) -> Optional[str]:
    """The local path ``uri`` names (a plain path or a file:// URI), or None for other schemes."""
    match = _SCHEME.match(uri)
    if match is None:
        return uri
    return uri[match.end() :] if match.group(1).lower() == "file" else None


def relative_path_hint(uri: str) -> str:
    """For a relative local path, what an error about it should add; else ""."""
    path = local_path(uri)
    if path is None or os.path.isabs(path):
        return ""
    return (
        f". {uri!r} is a relative path, read from the working directory of the process that builds "
        "the pipeline (for a Java pipeline, the expansion service's): give an absolute path"
    )


def _location(uri: str, where: str) -> tuple[Optional[str], str]:
    """(scheme, path): scheme None and a resolved absolute path for a local file."""
    path = local_path(uri)
    if path is not None:
        return None, os.path.realpath(path)
    match = _SCHEME.match(uri)
    assert match is not None
    if ".." in uri[match.end() :].split("/"):
        raise ValueError(f"{where}={uri!r} contains a '..' segment; give the URI without it")
    return match.group(1).lower(), uri


def _under_any(location: tuple[Optional[str], str], roots: tuple[str, ...]) -> bool:
    scheme, path = location
    for root in roots:
        if root == ANY:
            return True
        root_scheme, root_path = _location(root, "root")
        if root_scheme != scheme:
            continue
        if scheme is None:
            if os.path.commonpath([root_path, path]) == root_path:
                return True
        elif path == root_path or path.startswith(root_path.rstrip("/") + "/"):
            return True
    return False


def _safe_formats() -> str:
    """E.g. "sklearn: skops; onnx: onnx": the formats of each framework that run no code."""
    return "; ".join(
        f"{framework.name}: {', '.join(framework.safe_formats)}"
        for framework in frameworks.REGISTRY.values()
        if framework.safe_formats and not framework.loads_itself
    )


def _listing(roots: tuple[str, ...]) -> str:
    return ", ".join(roots) if roots else "none configured"
