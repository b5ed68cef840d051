"""The SQL guard: only one read-only query over `fpr_records` gets through.

Ad-hoc SQL from a model or a user is parsed with sqlglot (DuckDB dialect) and accepted
only when it is exactly one statement whose root is a query, every table it reads is
`fpr_records` or a CTE visible where it is read (resolved by scope, as the warehouse
resolves names: a CTE named elsewhere in the statement does not count), every column
resolves against the schema, and every function is on an allow-list of scalar,
aggregate and window functions. That excludes all table functions (`read_csv`, `glob`,
`query`, `range`, ...), file, network, extension, pragma, attach, copy, export, settings
and system-catalog access by construction, rather than by a list of what to refuse.
Accepted queries get a row cap.

Resources are bounded too: statements longer than MAX_STATEMENT_CHARS or nested deeper
than MAX_NESTING are refused before analysis (the analysis is quadratic in the one case
and recursive in the other), `lpad`/`rpad` take a literal width of at most MAX_PAD, and
`run_sql`'s timeout covers the guard's own analysis. On the embedded warehouse the check
and the query run in a child process (`tools.isolation`) killed at the timeout or past
the memory limit, since DuckDB cannot stop a function midway through building one huge
value. Text that is not valid UTF-8 (a lone surrogate) is refused, not passed on.

The guard is the first wall; the DuckDB connection it runs on is read-only with external
access switched off and its configuration locked (see `tools.warehouse`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects import Dialect
from sqlglot.errors import OptimizeError, ParseError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.tokens import TokenType

from tools import isolation
from tools.evidence import Evidence
from tools.metrics import Filters
from tools.schema import COLUMNS, SQL_TYPES, TABLE
from tools.warehouse import (
    CANONICAL_DIALECT,
    QueryResult,
    QueryTimeout,
    Warehouse,
    WarehouseError,
    as_records,
    timeout_message,
)

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

# Bounds on what the guard analyses: sqlglot's column qualification is quadratic in the
# number of terms (a 10,000-term OR chain took 85 s), and its parser recurses once per
# nesting level (about 45 parentheses exhaust Python's stack). A long analytic query is a
# few thousand characters and nests a handful of levels.
MAX_STATEMENT_CHARS = 20_000
MAX_NESTING = 32
# lpad()/rpad() build a value of the length they are given: a format width, not a size.
MAX_PAD = 1_000
# How long after its deadline an isolated query's process is killed when it has not
# stopped itself (a function building one huge value cannot be interrupted midway).
KILL_GRACE_S = 1.0

TOO_DEEP = (
    "the statement nests too deeply to analyse (long chains of NOT, BETWEEN, IN or CASE); "
    "write it with fewer nested expressions"
)
# What a result may hold: a text value is cut to MAX_VALUE_CHARS, and rows stop once
# MAX_RESULT_CHARS of text have come (the row cap bounds rows, not their size).
MAX_VALUE_CHARS = 10_000
MAX_RESULT_CHARS = 2_000_000

_OPENING = {TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE}
_CLOSING = {TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE}


class GuardRejection(ValueError):
    """The statement is not one read-only query over `fpr_records`; `reason` says why."""

    def __init__(self, reason: str) -> None:
        """Keep the reason; the message adds what is allowed."""
        self.reason = reason
        super().__init__(
            f"Query rejected: {reason}. Only one SELECT over {TABLE} and its columns, "
            "using ordinary scalar, aggregate and window functions, is allowed."
        )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickle by reason (a rejection made in an isolated process comes back whole)."""
        return (GuardRejection, (self.reason,))


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


def fold(name: str) -> str:
    """Return an identifier as the warehouse compares it: ASCII letters lower-cased only.

    DuckDB folds case in ASCII alone, so `str.lower` would call the Kelvin sign in
    `"duc\u212adb_tables"` a k where DuckDB does not.
    """
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _function_name(node: exp.Func) -> str:
    return node.name if isinstance(node, exp.Anonymous) else node.sql_name().lower()


def screen(sql: str) -> None:
    """Refuse, cheaply and before any analysis, statements too big or too odd to analyse."""
    if not sql or not sql.strip():
        raise GuardRejection("the statement is empty")
    if len(sql) > MAX_STATEMENT_CHARS:
        raise GuardRejection(
            f"the statement is {len(sql):,} characters long; the limit is "
            f"{MAX_STATEMENT_CHARS:,} (group or filter by a condition instead of listing "
            "many literal values)"
        )
    for i, ch in enumerate(sql):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise GuardRejection(
                f"the statement is not valid text: a lone surrogate (U+{ord(ch):04X}) at "
                f"character {i + 1}; send it as UTF-8 text"
            )
    try:
        tokens = Dialect.get_or_raise(CANONICAL_DIALECT).tokenize(sql)
    except TokenError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GuardRejection(f"the SQL could not be parsed ({first})") from None
    depth = deepest = 0
    for token in tokens:
        if token.token_type in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif token.token_type in _CLOSING:
            depth -= 1
    if deepest > MAX_NESTING:
        raise GuardRejection(
            f"the statement nests {deepest} levels deep; the limit is {MAX_NESTING} "
            "(use CTEs instead of nesting subqueries and parentheses)"
        )


def check(sql: str, *, row_cap: int = 1000) -> GuardedQuery:
    """Return `sql` as a capped query if it is one read-only query over `fpr_records`."""
    screen(sql)
    try:
        return _check(sql, row_cap)
    except RecursionError:  # long chains of unary operators or CASEs, no parentheses
        raise GuardRejection(TOO_DEEP) from None


def _check(sql: str, row_cap: int) -> GuardedQuery:
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

    if any(fold(cte.alias_or_name) == TABLE for cte in root.find_all(exp.CTE)):
        raise GuardRejection(f"a CTE may not be named {TABLE}")
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise GuardRejection(f"{node.key.upper()} is not allowed inside a query")
        if isinstance(node, exp.Placeholder | exp.Parameter):
            raise GuardRejection("parameters are not supported; write values inline")
    _check_tables(root)
    for node in root.walk():
        if isinstance(node, exp.Func):
            name = _function_name(node)
            allowed = (
                name.lower() in ALLOWED_ANONYMOUS
                if isinstance(node, exp.Anonymous)
                else type(node).__name__ in ALLOWED_FUNCTIONS
            )
            if not allowed:
                raise GuardRejection(f"function {name}() is not allowed")
            if isinstance(node, exp.Pad):
                _check_pad(node)

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


def _check_pad(node: exp.Pad) -> None:
    name = "lpad" if node.args.get("is_left") else "rpad"
    length = node.expression
    value = length.this if isinstance(length, exp.Neg) else length
    if not (isinstance(value, exp.Literal) and value.is_int and int(value.this) <= MAX_PAD):
        raise GuardRejection(
            f"{name}() pads to at most {MAX_PAD:,} characters, given as a number "
            f"(got {length.sql(CANONICAL_DIALECT)})"
        )


def _check_tables(root: exp.Expr) -> None:
    """Check that every table reference is `fpr_records` or a CTE visible where it stands.

    A CTE is visible in the body of the query that defines it, in the CTEs after it in
    the same WITH, and in its own body only under RECURSIVE and only in the recursive
    term, the right side of the body's top UNION (the rules DuckDB applies); anywhere
    else the same name reaches a real object. Walked with a stack: OR chains
    make trees thousands of levels deep.
    """
    stack: list[tuple[exp.Expr, frozenset[str]]] = [(root, frozenset())]
    while stack:
        node, visible = stack.pop()
        if isinstance(node, exp.Table):
            _check_table(node, visible)
        with_ = node.args.get("with_") if isinstance(node, exp.Query) else None
        if isinstance(with_, exp.With):
            recursive = bool(with_.args.get("recursive"))
            earlier: set[str] = set()
            for cte in with_.expressions:
                name = fold(cte.alias_or_name)
                body, outer = cte.this, visible | earlier
                if recursive and isinstance(body, exp.Union):
                    # Only the recursive term (the right side of the body's top UNION)
                    # reads the CTE itself; everywhere else its name is the real object's.
                    stack.append((body.expression, outer | {name}))
                    stack += [
                        (c, outer) for c in body.iter_expressions() if c is not body.expression
                    ]
                else:
                    stack.append((body, outer))
                earlier.add(name)
            inner = visible | earlier
            stack += [(child, inner) for child in node.iter_expressions() if child is not with_]
        else:
            stack += [(child, visible) for child in node.iter_expressions()]


def _check_table(node: exp.Table, visible: frozenset[str]) -> None:
    if not isinstance(node.this, exp.Identifier):
        inner = node.this
        name = _function_name(inner) if isinstance(inner, exp.Func) else inner.sql()
        raise GuardRejection(f"table functions are not allowed ({name})")
    if node.args.get("db") or node.args.get("catalog"):
        raise GuardRejection(f"only {TABLE} may be queried, not {node.sql(CANONICAL_DIALECT)}")
    name = fold(node.name)
    if name != TABLE and name not in visible:
        raise GuardRejection(f"only {TABLE} may be queried, not {node.name}")


def _with_cap(root: exp.Query, row_cap: int) -> exp.Query:
    """Return `root` limited to `row_cap + 1` rows (one more shows the cap was hit)."""
    tree = root.copy()
    limit = tree.args.get("limit")
    existing = limit.expression if isinstance(limit, exp.Limit) else None
    if isinstance(existing, exp.Literal) and existing.is_int and int(existing.this) <= row_cap:
        return tree
    return tree.limit(row_cap + 1, copy=False)


def in_scope(tree: exp.Query, scope: Filters) -> exp.Query:
    """Return `tree` with every read of `fpr_records` narrowed to the rows of `scope`.

    Each reference becomes `(SELECT * FROM fpr_records WHERE <scope>) AS <its alias>`,
    the scope's values written as literals into the tree (never into text).
    """
    condition, params = scope.where()
    if not params:
        return tree
    where = sqlglot.parse_one(condition, read=CANONICAL_DIALECT).transform(
        lambda n: exp.convert(params[n.name]) if isinstance(n, exp.Placeholder) else n
    )
    scoped = tree.copy()
    for table in list(scoped.find_all(exp.Table)):
        if fold(table.name) == TABLE and not table.args.get("db"):
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(TABLE))
            rows = exp.select("*").from_(TABLE).where(where.copy())
            table.replace(exp.Subquery(this=rows, alias=alias.copy()))
    return scoped


def _run_checked(
    warehouse: Warehouse,
    sql: str,
    row_cap: int,
    scope: Filters | None,
    deadline: float,
    timeout_s: float,
) -> QueryResult:
    """Check `sql`, then run it in `scope` in what is left of the time before `deadline`."""
    guarded = check(sql, row_cap=row_cap)
    try:  # writing the tree out again recurses as deep as it nests, past what check() saw
        tree = in_scope(guarded.tree, scope) if scope is not None else guarded.tree
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueryTimeout(timeout_message(timeout_s))
        return bounded(warehouse.run(tree, max_rows=row_cap, timeout_s=remaining))
    except QueryTimeout:
        raise QueryTimeout(timeout_message(timeout_s)) from None
    except RecursionError:
        raise GuardRejection(TOO_DEEP) from None


def _bounded_value(value: Any) -> tuple[Any, int]:
    """Return `value` with its text cut to MAX_VALUE_CHARS, and how much text it holds."""
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            value = value[: MAX_VALUE_CHARS - 1] + "…"
        return value, len(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value[:MAX_VALUE_CHARS]), min(len(value), MAX_VALUE_CHARS)
    if isinstance(value, list | tuple):
        items = [_bounded_value(v) for v in value]
        return type(value)(v for v, _ in items), sum(n for _, n in items)
    if isinstance(value, dict):
        pairs = [(_bounded_value(k), _bounded_value(v)) for k, v in value.items()]
        return {k: v for (k, _), (v, _) in pairs}, sum(a + b for (_, a), (_, b) in pairs)
    return value, 8


def bounded(result: QueryResult) -> QueryResult:
    """Return `result` within the size bounds; `truncated` says when rows were left out."""
    rows: list[tuple[Any, ...]] = []
    size = 0
    for row in result.rows:
        cells = [_bounded_value(v) for v in row]
        size += sum(n for _, n in cells)
        if size > MAX_RESULT_CHARS and rows:
            return dataclasses.replace(result, rows=rows, truncated=True)
        rows.append(tuple(v for v, _ in cells))
    return dataclasses.replace(result, rows=rows)


def _run_isolated(
    opener: Callable[[], Warehouse],
    sql: str,
    row_cap: int,
    scope: Filters | None,
    deadline: float,
    timeout_s: float,
) -> QueryResult:
    """In a child process: open a private read-only copy of the warehouse and run there."""
    warehouse = opener()
    try:
        return _run_checked(warehouse, sql, row_cap, scope, deadline, timeout_s)
    finally:
        warehouse.close()


def run_sql(
    warehouse: Warehouse,
    sql: str,
    *,
    row_cap: int = 1000,
    timeout_s: float = 30.0,
    scope: Filters | None = None,
) -> Evidence:
    """Check `sql` with the guard, run it with its row cap and timeout, return Evidence.

    The timeout covers the guard's own analysis too. On a warehouse that can be opened
    again in another process (the embedded one), the check and the query run in a child
    process stopped at the timeout or past the memory limit (`tools.isolation`); a
    remote warehouse bounds its own resources. With `scope`, the query sees only the
    records in it.
    """
    opener = warehouse.reopener()
    if opener is not None:  # starting the query server is the process's, not the query's
        try:
            isolation.warm()
        except isolation.ChildFailed as e:
            raise WarehouseError(f"The query could not be run: {e}.") from None
    deadline = time.monotonic() + timeout_s
    screen(sql)
    if opener is None:
        result = _run_checked(warehouse, sql, row_cap, scope, deadline, timeout_s)
    else:
        try:
            result = isolation.run(
                _run_isolated,
                opener,
                sql,
                row_cap,
                scope,
                deadline,
                timeout_s,
                deadline=deadline + KILL_GRACE_S,
                max_rss_bytes=warehouse.memory_ceiling(),
            )
        except isolation.ChildTimeout:
            raise QueryTimeout(timeout_message(timeout_s)) from None
        except isolation.ChildOutOfMemory as e:
            raise WarehouseError(
                "The query needed more memory than FINMATCH_DUCKDB_MEMORY_LIMIT allows (its "
                f"process reached {e.rss_bytes / 2**20:,.0f} MiB, past the ceiling of "
                f"{e.ceiling_bytes / 2**20:,.0f} MiB) and was stopped. Build smaller values "
                "(fewer nested replace() or string_agg() calls), aggregate more, or raise "
                "the limit."
            ) from None
        except isolation.ChildFailed as e:
            raise WarehouseError(f"The query could not be run: {e}.") from None
    rows = as_records(result.columns, result.rows)
    return Evidence(
        metric_id="sql",
        title="Ad-hoc query" + (f" ({scope.describe()})" if scope is not None else ""),
        sql=result.sql,
        parameters={},
        columns=result.columns,
        rows=rows,
        row_count=len(rows),
        truncated=result.truncated,
        elapsed_ms=result.elapsed_ms,
        warehouse=warehouse.url,
    )
