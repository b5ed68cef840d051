"""The model registry: which names a run may choose, and how each is built.

- `offline` (the default): the deterministic analyst in `graphs.analyst`, no LLM.
- Databricks serving endpoints named by `DBX_ENDPOINT`, `DBX_ENDPOINT_2` ... `_7` (with
  `DATABRICKS_HOST` and `DATABRICKS_TOKEN`), built as `ChatDatabricks`.
- OpenAI-compatible endpoints: `openai:<model>` with `FINMATCH_OPENAI_BASE_URL`
  (and `FINMATCH_OPENAI_API_KEY`); `FINMATCH_OPENAI_MODELS` lists the ones to offer.
- `import:package.module:factory`: any chat model a factory returns (the factory gets the
  run's Context), for models this registry does not know.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tools.settings import current

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from graphs.context import Context

OFFLINE = "offline"
OFFLINE_LABEL = "the FinMatch offline analyst (deterministic rules over the findings, no LLM)"


class ModelSettings(BaseSettings):
    """Model endpoints, named as the FinMatch deployment names them."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    databricks_host: str | None = None
    databricks_token: SecretStr | None = None
    dbx_endpoint: str | None = None
    dbx_endpoint_2: str | None = None
    dbx_endpoint_3: str | None = None
    dbx_endpoint_4: str | None = None
    dbx_endpoint_5: str | None = None
    dbx_endpoint_6: str | None = None
    dbx_endpoint_7: str | None = None
    databricks_serving_endpoint_url: str | None = None
    databricks_endpoint_2_url: str | None = None
    databricks_endpoint_3_url: str | None = None
    databricks_endpoint_4_url: str | None = None
    databricks_endpoint_5_url: str | None = None
    databricks_endpoint_6_url: str | None = None
    databricks_endpoint_7_url: str | None = None
    finmatch_openai_base_url: str | None = None
    finmatch_openai_api_key: SecretStr | None = None
    finmatch_openai_models: str = Field("", description="Comma-separated model names")
    finmatch_import_models: str = Field(
        "",
        description="Comma-separated `import:package.module:factory` models to list with the "
        "others (a model client of your own); the endpoint runs no other `import:` model",
    )

    @field_validator("finmatch_import_models")
    @classmethod
    def _import_specs(cls, value: str) -> str:
        for spec in filter(None, (m.strip() for m in value.split(","))):
            if not spec.startswith("import:") or spec.count(":") != 2:
                raise ValueError(
                    f"FINMATCH_IMPORT_MODELS lists {spec!r}; each entry must look like "
                    "import:package.module:factory"
                )
        return value

    def import_models(self) -> list[str]:
        """Return the `import:` model names to list."""
        return [m.strip() for m in self.finmatch_import_models.split(",") if m.strip()]

    def databricks_endpoints(self) -> dict[str, str]:
        """Return endpoint name -> invocation URL (or '') for each configured endpoint."""
        out = {}
        pairs = [(self.dbx_endpoint, self.databricks_serving_endpoint_url)] + [
            (getattr(self, f"dbx_endpoint_{i}"), getattr(self, f"databricks_endpoint_{i}_url"))
            for i in range(2, 8)
        ]
        for name, url in pairs:
            if name:
                out[name] = url or ""
        return out


@dataclass(frozen=True)
class ModelSpec:
    """A model a run can select."""

    name: str
    kind: str
    description: str


class UnknownModel(ValueError):
    """The model name is not in the registry."""


class ModelError(RuntimeError):
    """A model call failed after its retries; the run stays resumable."""


def available_models(settings: ModelSettings | None = None) -> list[ModelSpec]:
    """Return the models configured on this machine, `offline` first."""
    settings = settings or current(ModelSettings)
    specs = [ModelSpec(OFFLINE, "offline", OFFLINE_LABEL)]
    for name, url in settings.databricks_endpoints().items():
        specs.append(ModelSpec(name, "databricks", f"Databricks serving endpoint {url or name}"))
    if settings.finmatch_openai_base_url:
        for model in filter(None, (m.strip() for m in settings.finmatch_openai_models.split(","))):
            specs.append(
                ModelSpec(
                    f"openai:{model}", "openai", f"{model} at {settings.finmatch_openai_base_url}"
                )
            )
    for spec in settings.import_models():
        specs.append(ModelSpec(spec, "import", f"Model built by {spec.removeprefix('import:')}"))
    return specs


def check_model(
    name: str, settings: ModelSettings | None = None, *, any_import: bool = True
) -> str:
    """Return `name` if a run can use it, else raise UnknownModel naming the choices.

    An `import:` name runs code of this machine's choosing: the command line accepts any,
    a request from outside (`any_import=False`) only those in FINMATCH_IMPORT_MODELS.
    """
    settings = settings or current(ModelSettings)
    if name.startswith("import:") and (any_import or name in settings.import_models()):
        return name
    if name.startswith("openai:") and settings.finmatch_openai_base_url:
        return name
    names = [s.name for s in available_models(settings)]
    if name not in names:
        hint = (
            ""
            if len(names) > 1
            else (
                " Configure Databricks endpoints with DBX_ENDPOINT (and DATABRICKS_HOST, "
                "DATABRICKS_TOKEN) or an OpenAI-compatible one with FINMATCH_OPENAI_BASE_URL."
            )
        )
        raise UnknownModel(f"Unknown model {name!r}; available: {', '.join(names)}.{hint}")
    return name


def build_chat_model(
    name: str, ctx: Context, settings: ModelSettings | None = None
) -> BaseChatModel:
    """Build the chat model `name` with the run's timeout and retry settings."""
    settings = settings or current(ModelSettings)
    check_model(name, settings)
    if name.startswith("import:"):
        module, _, attr = name.removeprefix("import:").partition(":")
        factory: Any = getattr(importlib.import_module(module), attr)
        return factory(ctx)
    if name.startswith("openai:"):
        from langchain_openai import ChatOpenAI

        key = settings.finmatch_openai_api_key
        return ChatOpenAI(
            model=name.removeprefix("openai:"),
            base_url=settings.finmatch_openai_base_url,
            api_key=key or SecretStr("not-needed"),
            timeout=ctx.model_timeout_s,
            max_retries=0,  # retries with backoff are ours (graphs.analyst.call_model)
            temperature=0,
        )
    # Imported here: databricks-langchain takes seconds to import.
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config
    from databricks_langchain import ChatDatabricks

    if not settings.databricks_host or not settings.databricks_token:
        raise ModelError(
            f"Model {name!r} is a Databricks serving endpoint; set DATABRICKS_HOST and "
            "DATABRICKS_TOKEN."
        )
    # Without short SDK timeouts an unreachable host hangs for minutes in host lookup retries.
    client = WorkspaceClient(
        config=Config(
            host=settings.databricks_host,
            token=settings.databricks_token.get_secret_value(),
            retry_timeout_seconds=5,
            http_timeout_seconds=int(ctx.model_timeout_s),
        )
    )
    return ChatDatabricks(
        endpoint=name,
        workspace_client=client,
        timeout=ctx.model_timeout_s,
        max_retries=0,
        temperature=0,
    )
