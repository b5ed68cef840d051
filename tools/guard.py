"""The SQL guard: only one read-only query over `fpr_records` gets through.

Ad-hoc SQL from a model or a user is parsed with sqlglot (DuckDB dialect) and accepted
only when it is exactly one statement whose root is a query, every table it reads is
`fpr_records` (or a CTE of the same query), every column resolves against the schema,
and every function is on an allow-list of scalar, aggregate and window functions. That
excludes all table functions (`read_csv`, `glob`, `query`, `range`, ...), file, network,
extension, pragma, attach, copy, export, settings and system-catalog access by
construction, rather than by a list of what to refuse. Accepted queries get a row cap.

The guard is the first wall; the DuckDB connection it runs on is read-only with external
access switched off and its configuration locked (see `tools.warehouse`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, TokenError
from sqlglot.optimizer.qualify import qualify

from tools.evidence import Evidence
from tools.schema import COLUMNS, SQL_TYPES, TABLE
from tools.warehouse import CANONICAL_DIALECT, Warehouse, as_records

# sqlglot logs a warning when it falls back to an opaque Command; the guard reports
# those itself.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

# Functions sqlglot knows, by expression class: scalar, aggregate and window functions
# with no side effects and no access to anything but their arguments.
ALLOWED_FUNCTIONS = frozenset(
    {
        # aggregates
        "Count",
        "Sum",
        "Avg",
        "Min",
        "Max",
        "Median",
        "Quantile",
        "PercentileCont",
        "PercentileDisc",
        "ApproxQuantile",
        "Stddev",
        "StddevSamp",
        "StddevPop",
        "Variance",
        "VariancePop",
        "Corr",
        "CovarPop",
        "CovarSamp",
        "RegrSlope",
        "RegrIntercept",
        "RegrR2",
        "RegrCount",
        "RegrAvgx",
        "RegrAvgy",
        "CountIf",
        "LogicalAnd",
        "LogicalOr",
        "AnyValue",
        "ArgMax",
        "ArgMin",
        "First",
        "Last",
        "Mode",
        "ApproxDistinct",
        "GroupConcat",
        "ArrayAgg",
        "Grouping",
        "Kurtosis",
        "Skewness",
        # window functions
        "RowNumber",
        "Rank",
        "DenseRank",
        "PercentRank",
        "CumeDist",
        "Ntile",
        "Lag",
        "Lead",
        "FirstValue",
        "LastValue",
        "NthValue",
        # boolean operators (sqlglot models these as functions too)
        "And",
        "Or",
        "Xor",
        # conditionals and casts
        "Case",
        "If",
        "Coalesce",
        "Nullif",
        "Greatest",
        "Least",
        "Cast",
        "TryCast",
        # maths
        "Abs",
        "Round",
        "Floor",
        "Ceil",
        "Sqrt",
        "Cbrt",
        "Pow",
        "Exp",
        "Ln",
        "Log",
        "Log2",
        "Log10",
        "Sign",
        "Mod",
        "WidthBucket",
        "Pi",
        "Trunc",
        # text
        "Lower",
        "Upper",
        "Length",
        "Trim",
        "Substring",
        "Concat",
        "ConcatWs",
        "Replace",
        "Left",
        "Right",
        "StrPosition",
        "Contains",
        "StartsWith",
        "EndsWith",
        "SplitPart",
        "Pad",
        "Initcap",
        "Reverse",
        "RegexpLike",
        "RegexpExtract",
        "RegexpReplace",
        # dates
        "Extract",
        "DateTrunc",
        "TimestampTrunc",
        "DateDiff",
        "DateAdd",
        "DateSub",
        "Year",
        "Quarter",
        "Month",
        "Week",
        "Day",
        "DayOfWeek",
        "DayOfMonth",
        "DayOfYear",
        "CurrentDate",
        "CurrentTimestamp",
        "DateFromParts",
        "TimeToStr",
        "StrToDate",
        "StrToTime",
        "TimeToUnix",
        "UnixToTime",
        "LastDay",
        "ToDays",
        "Interval",
    }
)

# Functions sqlglot does not model (parsed as Anonymous), by lower-case name.
ALLOWED_ANONYMOUS = frozenset(
    {
        "date_part",
        "datepart",
        "dayname",
        "monthname",
        "yearweek",
        "epoch",
        "make_date",
        "strftime",
        "strptime",
        "ifnull",
        "nvl",
        "iff",
        "lpad",
        "rpad",
        "ltrim",
        "rtrim",
        "strpos",
        "instr",
        "position",
        "ceiling",
        "power",
        "ln",
        "bool_and",
        "bool_or",
        "quantile_cont",
        "quantile_disc",
        "approx_quantile",
        "fsum",
        "favg",
        "entropy",
        "string_agg",
        "listagg",
        "count_star",
        "list",
        "histogram",
        "product",
        "stddev_samp",
        "var_samp",
        "var_pop",
        "try_divide",
        "div",
        "isnan",
        "isfinite",
        "isinf",
        "even",
        "gamma",
        "lgamma",
        "degrees",
        "radians",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "atan2",
        "bit_length",
        "octet_length",
        "char_length",
        "character_length",
        "suffix",
        "prefix",
        "ilike",
        "like",
        "similar_to",
    }
)

# Statement and clause types that never belong in a read-only query, wherever they nest.
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name)
    for name in (
        "Insert",
        "Update",
        "Delete",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "Copy",
        "Command",
        "Pragma",
        "Set",
        "Attach",
        "Detach",
        "Install",
        "Use",
        "Describe",
        "Summarize",
        "Show",
        "Transaction",
        "Commit",
        "Rollback",
        "Into",
        "Lock",
        "LoadData",
        "Export",
        "Grant",
        "Revoke",
        "Analyze",
        "TruncateTable",
        "Refresh",
        "Cache",
        "Uncache",
        "Comment",
        "Declare",
        "Execute",
    )
    if hasattr(exp, name)
)

SCHEMA: dict[str, object] = {TABLE: {c.name: SQL_TYPES[c.type] for c in COLUMNS}}


class GuardRejection(ValueError):
    """The statement is not one read-only query over `fpr_records`; `reason` says why."""

    def __init__(self, reason: str) -> None:
        """Keep the reason; the message adds what is allowed."""
        self.reason = reason
        super().__init__(
            f"Query rejected: {reason}. Only one SELECT over {TABLE} and its columns, "
            "using ordinary scalar, aggregate and window functions, is allowed."
        )


@dataclass(frozen=True)
class GuardedQuery:
    """A statement the guard accepted, rewritten with its row cap."""

    original: str
    tree: exp.Query
    row_cap: int

    @property
    def sql(self) -> str:
        """The accepted query in the canonical dialect, with the cap applied."""
        return self.tree.sql(CANONICAL_DIALECT)


def _function_name(node: exp.Func) -> str:
    return node.name if isinstance(node, exp.Anonymous) else node.sql_name().lower()


def check(sql: str, *, row_cap: int = 1000) -> GuardedQuery:
    """Return `sql` as a capped query if it is one read-only query over `fpr_records`."""
    if not sql or not sql.strip():
        raise GuardRejection("the statement is empty")
    try:
        statements = [s for s in sqlglot.parse(sql, read=CANONICAL_DIALECT) if s is not None]
    except (ParseError, TokenError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GuardRejection(f"the SQL could not be parsed ({first})") from None
    if len(statements) != 1:
        raise GuardRejection(f"expected exactly one statement, found {len(statements)}")
    root = statements[0]
    if not isinstance(root, exp.Query):
        kind = root.key.upper() if not isinstance(root, exp.Command) else str(root.this).upper()
        raise GuardRejection(f"only queries may run; this statement is {kind}")

    cte_names = {cte.alias_or_name.lower() for cte in root.find_all(exp.CTE)}
    if TABLE in cte_names:
        raise GuardRejection(f"a CTE may not be named {TABLE}")
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise GuardRejection(f"{node.key.upper()} is not allowed inside a query")
        if isinstance(node, exp.Placeholder | exp.Parameter):
            raise GuardRejection("parameters are not supported; write values inline")
        if isinstance(node, exp.Table):
            _check_table(node, cte_names)
        elif isinstance(node, exp.Func):
            name = _function_name(node)
            allowed = (
                name.lower() in ALLOWED_ANONYMOUS
                if isinstance(node, exp.Anonymous)
                else type(node).__name__ in ALLOWED_FUNCTIONS
            )
            if not allowed:
                raise GuardRejection(f"function {name}() is not allowed")

    try:
        qualify(
            root.copy(),
            schema=SCHEMA,
            dialect=CANONICAL_DIALECT,
            validate_qualify_columns=True,
        )
    except OptimizeError as e:
        raise GuardRejection(f"unknown column ({str(e).rstrip('.')})") from None

    return GuardedQuery(sql, _with_cap(root, row_cap), row_cap)


def _check_table(node: exp.Table, cte_names: set[str]) -> None:
    if not isinstance(node.this, exp.Identifier):
        inner = node.this
        name = _function_name(inner) if isinstance(inner, exp.Func) else inner.sql()
        raise GuardRejection(f"table functions are not allowed ({name})")
    if node.args.get("db") or node.args.get("catalog"):
        raise GuardRejection(f"only {TABLE} may be queried, not {node.sql(CANONICAL_DIALECT)}")
    name = node.name.lower()
    if name != TABLE and name not in cte_names:
        raise GuardRejection(f"only {TABLE} may be queried, not {node.name}")


def _with_cap(root: exp.Query, row_cap: int) -> exp.Query:
    """Return `root` limited to `row_cap + 1` rows (one more shows the cap was hit)."""
    tree = root.copy()
    limit = tree.args.get("limit")
    existing = limit.expression if isinstance(limit, exp.Limit) else None
    if isinstance(existing, exp.Literal) and existing.is_int and int(existing.this) <= row_cap:
        return tree
    return tree.limit(row_cap + 1, copy=False)


def run_sql(
    warehouse: Warehouse,
    sql: str,
    *,
    row_cap: int = 1000,
    timeout_s: float = 30.0,
) -> Evidence:
    """Check `sql` with the guard, run it with its row cap and timeout, return Evidence."""
    guarded = check(sql, row_cap=row_cap)
    result = warehouse.run(guarded.tree, max_rows=row_cap, timeout_s=timeout_s)
    rows = as_records(result.columns, result.rows)
    return Evidence(
        metric_id="sql",
        title="Ad-hoc query",
        sql=result.sql,
        parameters={},
        columns=result.columns,
        rows=rows,
        row_count=len(rows),
        truncated=result.truncated,
        elapsed_ms=result.elapsed_ms,
        warehouse=warehouse.url,
    )
