"""Warden settings: read from the environment only, with safe production defaults.

Every knob is an environment variable (a secret may also come from `<NAME>_FILE`).
Nothing here exists only in production: `make run` and `make test` set the few
development values (DEBUG=1, a local SECRET_KEY) explicitly in scripts/devstack.py.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envstr(name: str, default: str = "") -> str:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = envstr(name, "")
    if value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def envint(name: str, default: int) -> int:
    value = envstr(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured("DATABASE_URL must be a postgres:// URL")
    options = dict(parse_qsl(parts.query))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "warden",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }


DEBUG = envbool("DEBUG", False)

SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. `make run` and `make test` set a local one; in production "
        "set SECRET_KEY (or SECRET_KEY_FILE) to a long random value."
    )

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "governance.apps.GovernanceConfig",
    "agents.apps.AgentsConfig",
    "billing.apps.BillingConfig",
    "audit.apps.AuditConfig",
]

MIDDLEWARE = [
    "governance.middleware.CorrelationIdMiddleware",
    "governance.middleware.RejectNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the sign-in page's 429
]

ROOT_URLCONF = "governance.urls"
ASGI_APPLICATION = "governance.asgi.application"
WSGI_APPLICATION = "governance.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "governance.context_processors.navigation",
            ],
        },
    },
]

# --- data stores --------------------------------------------------------------

DATABASE_URL = envstr("DATABASE_URL", "postgres://postgres@127.0.0.1:54329/warden")
DATABASES = {"default": database_from_url(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = envint("DB_CONN_MAX_AGE", 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", envint("DB_CONNECT_TIMEOUT", 5))
# The role web, workers and beat connect as, named for the owner's `manage.py setup_database`
# (run after `migrate` with DATABASE_URL pointing at the owner). See governance/database.py.
WARDEN_APP_DATABASE_URL = envstr("WARDEN_APP_DATABASE_URL")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:63799/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "warden",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that
        # channels_redis blocks on BZPOPMIN: every idle websocket then died with a
        # TimeoutError. Read longer than the blocking pop; still notice a dead Redis.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 2}],
                   "prefix": "warden:channels"},
    }
}

# --- Celery (broker only; results are recorded in PostgreSQL by the services) ---
#
# Nothing is lost and nothing is done twice (agents/runtime/runner.py): a task is acknowledged only when it
# has finished (acks_late), a worker process that dies hands its task back (reject_on_worker_lost), a worker
# holds one task at a time (prefetch 1), and a task that is neither acknowledged nor handed back (a whole
# host lost) is delivered again after the visibility timeout, longer than any task may run. Tasks are sent
# only after the transaction that asked for them commits. Redis must not evict keys (noeviction).

CELERY_BROKER_URL = envstr("WARDEN_BROKER_URL") or REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SOFT_TIME_LIMIT = envint("WARDEN_TASK_SOFT_TIME_LIMIT", 240)
CELERY_TASK_TIME_LIMIT = envint("WARDEN_TASK_TIME_LIMIT", 300)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("WARDEN_TASK_VISIBILITY_TIMEOUT", 3600)}
if CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("WARDEN_TASK_VISIBILITY_TIMEOUT must be longer than WARDEN_TASK_TIME_LIMIT: a task "
                               "still running would be delivered a second time")
if CELERY_TASK_SOFT_TIME_LIMIT >= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("WARDEN_TASK_SOFT_TIME_LIMIT must be shorter than WARDEN_TASK_TIME_LIMIT")
CELERY_TIMEZONE = envstr("WARDEN_TIMEZONE", "UTC")
CELERY_BEAT_SCHEDULE: dict = {
    "start-scheduled-runs": {"task": "agents.runs_schedule", "schedule": float(envint("WARDEN_RUN_SCHEDULE_SECONDS", 10))},
    "recover-stalled-runs": {"task": "agents.runs_recover", "schedule": float(envint("WARDEN_RUN_RECOVERY_SECONDS", 30))},
    "release-stale-reservations": {"task": "billing.reservations_sweep", "schedule": 60.0},
    "sign-audit-chain-heads": {"task": "audit.checkpoint", "schedule": 60.0},
    "archive-old-audit-events": {"task": "audit.archive", "schedule": 6 * 3600.0},
    "expire-audit-exports": {"task": "audit.exports_sweep", "schedule": 3600.0},
    "expire-approvals": {"task": "governance.approvals_expire", "schedule": 60.0},
    "remind-approvers": {"task": "governance.approvals_remind", "schedule": 300.0},
    "detect-anomalies": {"task": "governance.anomaly_scan", "schedule": 60.0, "options": {"expires": 55}},
}

# --- security -----------------------------------------------------------------

SESSION_COOKIE_SECURE = envbool("WARDEN_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = envbool("WARDEN_SECURE_SSL_REDIRECT", not DEBUG)
# Probes from a load balancer or orchestrator speak plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = envint("WARDEN_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("WARDEN_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = envbool("WARDEN_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if envbool("WARDEN_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("WARDEN_MAX_REQUEST_BYTES", 1024 * 1024)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses sign-ins from a locked-out username + address
    "django.contrib.auth.backends.ModelBackend",
]
# Sign-in lockout (django-axes, counted in PostgreSQL): after this many failures for one username
# from one address, that pair is refused for the cool-off; a success resets the count.
WARDEN_SIGNIN_FAILURE_LIMIT = envint("WARDEN_SIGNIN_FAILURE_LIMIT", 5)
WARDEN_SIGNIN_LOCKOUT_MINUTES = envint("WARDEN_SIGNIN_LOCKOUT_MINUTES", 15)
AXES_FAILURE_LIMIT = WARDEN_SIGNIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = datetime.timedelta(minutes=WARDEN_SIGNIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # sign-ins are in the audit log already
AXES_LOCKOUT_CALLABLE = "governance.views.sign_in_locked_out"
AXES_CLIENT_IP_CALLABLE = "governance.middleware.client_address"  # the same address as the API's limits
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- i18n / time ----------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("WARDEN_TIMEZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "static"

# --- API ------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "governance.api.authentication.BearerAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "governance.api.authentication.AnonymousLimit",  # counts what nothing above authenticated
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["governance.api.parsers.BoundedJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "governance.api.exceptions.problem_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "governance.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    # Per client address (governance/api/throttles.py): bad bearer credentials, and requests with none.
    "DEFAULT_THROTTLE_RATES": {
        "bad_credentials": envstr("WARDEN_API_BAD_CREDENTIALS_RATE", "20/min"),
        "anon": envstr("WARDEN_API_ANONYMOUS_RATE", "120/min"),
    },
    # The client address is REMOTE_ADDR unless Warden sits behind this many proxies that append to
    # X-Forwarded-For; a client's own X-Forwarded-For is never believed.
    "NUM_PROXIES": envint("WARDEN_NUM_PROXIES", 0),
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Warden API",
    "DESCRIPTION": "Governance for autonomous AI agents: registry, gate, budgets, approvals, audit.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"DataClassificationEnum": ["public", "internal", "confidential", "restricted"]},
    # AnonymousLimit authenticates nobody (it only counts): no security scheme to describe.
    "AUTHENTICATION_WHITELIST": ["governance.api.authentication.BearerAuthentication",
                                 "rest_framework.authentication.SessionAuthentication"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "governance.api.schema.problem_responses"],
}

# --- Warden ---------------------------------------------------------------------

WARDEN_TIMEZONE = TIME_ZONE
WARDEN_DEMO_PASSWORD = envstr("WARDEN_DEMO_PASSWORD")
WARDEN_API_MAX_BODY = envint("WARDEN_API_MAX_BODY", 64 * 1024)
WARDEN_MAX_DELEGATION_DEPTH = envint("WARDEN_MAX_DELEGATION_DEPTH", 3)
WARDEN_AUDIT_SIGNING_KEY = envstr("WARDEN_AUDIT_SIGNING_KEY")  # defaults to SECRET_KEY
# Events older than this many days move to compressed JSON Lines files (0 keeps them all in the table).
WARDEN_AUDIT_RETENTION_DAYS = envint("WARDEN_AUDIT_RETENTION_DAYS", 400)
WARDEN_AUDIT_ARCHIVE_DIR = Path(envstr("WARDEN_AUDIT_ARCHIVE_DIR") or BASE_DIR / "var" / "audit-archive")
WARDEN_EXPORT_DIR = Path(envstr("WARDEN_EXPORT_DIR") or BASE_DIR / "var" / "exports")
WARDEN_EXPORT_TTL_HOURS = envint("WARDEN_EXPORT_TTL_HOURS", 72)  # export files are deleted after this
WARDEN_RESERVATION_TIMEOUT = envint("WARDEN_RESERVATION_TIMEOUT", 900)  # seconds before the sweep releases
# Approvals: how long a request waits (a policy's @expires or a budget's setting may say otherwise), when the
# group is reminded before it lapses, and the groups whose members may decide for agents they own or lent to.
WARDEN_APPROVAL_TTL_HOURS = envint("WARDEN_APPROVAL_TTL_HOURS", 24)
WARDEN_APPROVAL_REMINDER_MINUTES = envint("WARDEN_APPROVAL_REMINDER_MINUTES", 60)
WARDEN_APPROVAL_SELF_APPROVE_GROUPS = envlist("WARDEN_APPROVAL_SELF_APPROVE_GROUPS")
WARDEN_APPROVAL_WEBHOOK_URL = envstr("WARDEN_APPROVAL_WEBHOOK_URL")
WARDEN_APPROVAL_WEBHOOK_SECRET = envstr("WARDEN_APPROVAL_WEBHOOK_SECRET")
# The console's address as people reach it, for links in e-mails and webhooks.
WARDEN_BASE_URL = envstr("WARDEN_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
WARDEN_SPIKE_FACTOR = envint("WARDEN_SPIKE_FACTOR", 4)
WARDEN_SPIKE_MIN_MICROS = envint("WARDEN_SPIKE_MIN_MICROS", 1_000_000)
WARDEN_ALERT_WEBHOOK_URL = envstr("WARDEN_ALERT_WEBHOOK_URL")
WARDEN_ALERT_WEBHOOK_SECRET = envstr("WARDEN_ALERT_WEBHOOK_SECRET")
# Anomaly rules (governance/anomalies.py): JSON merged over DEFAULT_RULES, e.g.
# {"spend_rate": {"factor": 5, "suspend": true}, "burst": {"enabled": false}}.
WARDEN_ANOMALY_RULES = envstr("WARDEN_ANOMALY_RULES", "{}")
# Where people reach the console, for links in e-mails and webhooks (empty: links are paths).
WARDEN_PUBLIC_URL = envstr("WARDEN_PUBLIC_URL", "")
# The trace viewer's page of one trace, e.g. http://localhost:16686/trace/{trace_id} (Jaeger): the audit trace page
# links each event's trace there. Traces are exported by the standard OTEL_* variables (governance/telemetry.py).
WARDEN_TRACE_URL = envstr("WARDEN_TRACE_URL", "")
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "warden@localhost")
WARDEN_HTTP_THREADS = envint("WARDEN_HTTP_THREADS", 8)

# --- the agent runtime (agents/runtime/) ------------------------------------------------
# Programs an agent may name (dotted paths); a name outside this list is refused at registration and at run.
WARDEN_AGENT_PROGRAMS = envlist("WARDEN_AGENT_PROGRAMS", ",".join(
    f"agents.runtime.demo.{name}" for name in ("pipeline", "paper_scout", "ticket_triage", "refund_helper",
                                               "invoice_reader", "onboarding_lead", "onboarding_analyst",
                                               "welcome_writer")))
# Tools the runtime offers besides http.get and email.send: dotted paths to Tool objects or lists of them.
WARDEN_TOOLS = envlist("WARDEN_TOOLS", "agents.runtime.demo.TOOLS")
# Where model calls go: a JSON object from model name (or fnmatch pattern, most specific first) to "simulated"
# or {"base_url": ..., "api_key" | "api_key_env" | "api_key_file": ..., "timeout": s, "max_retries": n}.
# A model that matches nothing cannot be called by the runtime (the step is refused, saying so).
WARDEN_LLM_UPSTREAMS = envstr("WARDEN_LLM_UPSTREAMS", "{}")
WARDEN_LLM_TIMEOUT = envint("WARDEN_LLM_TIMEOUT", 60)  # seconds, per attempt
WARDEN_LLM_MAX_RETRIES = envint("WARDEN_LLM_MAX_RETRIES", 2)  # on 429, 5xx, timeouts and broken connections
# The simulated provider: how long it "thinks" (ms, the demo looks alive) and how often its first structured
# answer does not validate (percent: the runtime rejects it and asks again, as with a real model).
WARDEN_SIMULATED_LATENCY_MS = envint("WARDEN_SIMULATED_LATENCY_MS", 600)
WARDEN_SIMULATED_INVALID_PERCENT = envint("WARDEN_SIMULATED_INVALID_PERCENT", 10)
# http.get reaches only these hosts (exact names or IPs; empty: none); answers are cut at this many bytes.
WARDEN_HTTP_TOOL_HOSTS = [host.lower() for host in envlist("WARDEN_HTTP_TOOL_HOSTS")]
WARDEN_HTTP_TOOL_MAX_BYTES = envint("WARDEN_HTTP_TOOL_MAX_BYTES", 512 * 1024)
WARDEN_HTTP_TOOL_TIMEOUT = envint("WARDEN_HTTP_TOOL_TIMEOUT", 15)
# email.send writes to Warden's own users and to addresses in these domains (empty: Warden's users only).
WARDEN_EMAIL_TOOL_DOMAINS = [domain.lower() for domain in envlist("WARDEN_EMAIL_TOOL_DOMAINS")]
WARDEN_RUN_MAX_STEPS = envint("WARDEN_RUN_MAX_STEPS", 60)  # a run that asks for more fails
WARDEN_RUN_STEPS_PER_TASK = envint("WARDEN_RUN_STEPS_PER_TASK", 8)  # then the task hands the run on (fairness)
WARDEN_RUN_OUTPUT_RETRIES = envint("WARDEN_RUN_OUTPUT_RETRIES", 2)  # structured output that does not validate
# A task starts no new step after this many seconds: it hands the run on, so one step never meets the time limit.
WARDEN_RUN_TASK_SECONDS = envint("WARDEN_RUN_TASK_SECONDS", 30)
if WARDEN_RUN_TASK_SECONDS + WARDEN_LLM_TIMEOUT * (WARDEN_LLM_MAX_RETRIES + 1) + 20 >= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("WARDEN_TASK_SOFT_TIME_LIMIT must leave room for WARDEN_RUN_TASK_SECONDS plus one model "
                               "call with all its retries (WARDEN_LLM_TIMEOUT x (WARDEN_LLM_MAX_RETRIES + 1))")
# A run that is queued or running, that no worker holds and that has not moved for this long is sent again.
WARDEN_RUN_STALL_SECONDS = envint("WARDEN_RUN_STALL_SECONDS", 60)
# Data views that serve data (governance/dataviews.py): files under WARDEN_DATA_DIR, tables through the
# database aliases named here (each a DATABASES entry, best as a role that may only SELECT).
WARDEN_DATA_DIR = envstr("WARDEN_DATA_DIR", str(BASE_DIR / "demo_data"))
WARDEN_DATA_DATABASES = envlist("WARDEN_DATA_DATABASES")
# Information flow (governance/flow.py): an agent that read data over the REST API is taken to hold it for
# this long; everything it sends meanwhile carries the data's classification.
WARDEN_FLOW_WINDOW_HOURS = envint("WARDEN_FLOW_WINDOW_HOURS", 24)
# The gate's hot path (governance/hotpath.py: one read, one write). Off: every request takes the slow path,
# one statement at a time; the decisions are the same (tests/gate/test_hotpath.py compares them).
WARDEN_GATE_HOT_PATH = envbool("WARDEN_GATE_HOT_PATH", True)
# The gate's reads and its write are prepared statements on each connection (planned once). Turn off behind a
# connection pooler that cannot keep prepared statements (PgBouncer before 1.21 in transaction mode).
WARDEN_GATE_PREPARE = envbool("WARDEN_GATE_PREPARE", True)
# The gateway (agents/gateway): OpenAI-compatible /v1/ for agents that run elsewhere.
WARDEN_GATEWAY_MAX_TOKENS = envint("WARDEN_GATEWAY_MAX_TOKENS", 1024)  # the cap when a request names none
WARDEN_GATEWAY_MAX_TOKENS_LIMIT = envint("WARDEN_GATEWAY_MAX_TOKENS_LIMIT", 32_768)  # the most one call may ask
WARDEN_GATEWAY_APPROVAL_WAIT = envint("WARDEN_GATEWAY_APPROVAL_WAIT", 30)  # seconds a call waits for a person
WARDEN_GATEWAY_MAX_BODY = envint("WARDEN_GATEWAY_MAX_BODY", 4_000_000)  # bytes of request
# Credentials for the MCP servers behind the gateway, never stored in the database:
# {"<server>": {"api_key": "..."} | {"api_key_env": "VAR"} | {"api_key_file": "/path"}} (sent as a Bearer token).
WARDEN_MCP_UPSTREAM_KEYS = envstr("WARDEN_MCP_UPSTREAM_KEYS", "{}")
# The demo's CRM MCP server (agents/gateway/demo_mcp.py) at /demo/mcp/, answering only this key; unset: not served.
WARDEN_DEMO_MCP_KEY = envstr("WARDEN_DEMO_MCP_KEY", "")
WARDEN_DEMO_MCP_URL = envstr("WARDEN_DEMO_MCP_URL", "")  # where seed_demo registers it ("crm")
WARDEN_DEMO_TRAFFIC = envbool("WARDEN_DEMO_TRAFFIC", True)  # beat starts the demo fleet's scheduled runs
WARDEN_READINESS_TIMEOUT = envint("WARDEN_READINESS_TIMEOUT", 2)
# /metrics (Prometheus) answers a scraper holding this token as a Bearer token; unset, it is not served.
WARDEN_METRICS_TOKEN = envstr("WARDEN_METRICS_TOKEN", "")

# --- logging: JSON in production, readable in development --------------------------

LOG_FORMAT = envstr("WARDEN_LOG_FORMAT", "text" if DEBUG else "json")
LOG_LEVEL = envstr("WARDEN_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "governance.logging.ContextFilter"}},
    "formatters": {
        "json": {"()": "governance.logging.JsonFormatter"},
        "text": {
            "format": "%(asctime)s %(levelname)-7s %(name)s [%(correlation_id)s trace=%(trace_id)s] %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "celery": {"level": LOG_LEVEL},
        "axes": {"level": "WARNING"},  # it logs every reset at INFO; lockouts are in the audit log
        # The MCP SDK logs every message and session at INFO, httpx every request: the audit log has the calls.
        "mcp": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
