"""The metric catalog: named, documented, parameterised queries over `fpr_records`.

Every metric aggregates inside the warehouse and returns an `Evidence` (the SQL that
ran, its parameters and rows). Filters (segment, lifecycle stage, product type and a
window on the recommendation date) apply to every metric the same way. The dashboard is
two scans: `kpis` and `distributions` (one GROUPING SETS query for all breakdowns).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.evidence import Evidence
from tools.schema import NUMERIC_COLUMNS
from tools.warehouse import Warehouse, as_records


class Filters(BaseModel):
    """Scope of an analysis: every field is optional and they combine with AND."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segment: str | None = Field(None, description="customer_segment equals this")
    lifecycle_stage: str | None = Field(None, description="customer_lifecycle_stage equals this")
    product_type: str | None = Field(None, description="product_type equals this")
    date_from: datetime.date | None = Field(
        None, description="product_recommendation_date on or after this day"
    )
    date_to: datetime.date | None = Field(
        None, description="product_recommendation_date on or before this day"
    )

    @model_validator(mode="after")
    def _window_in_order(self) -> Filters:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(
                f"date_from ({self.date_from}) is after date_to ({self.date_to}); swap them"
            )
        return self

    def where(self) -> tuple[str, dict[str, Any]]:
        """Return the SQL condition (canonical dialect, `:name` params) and its parameters."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for key, column in (
            ("segment", "customer_segment"),
            ("lifecycle_stage", "customer_lifecycle_stage"),
            ("product_type", "product_type"),
        ):
            value = getattr(self, key)
            if value is not None:
                clauses.append(f"{column} = :f_{key}")
                params[f"f_{key}"] = value
        if self.date_from:
            clauses.append("product_recommendation_date >= :f_date_from")
            params["f_date_from"] = self.date_from
        if self.date_to:
            clauses.append("product_recommendation_date <= :f_date_to")
            params["f_date_to"] = self.date_to
        return (" AND ".join(clauses) or "TRUE"), params

    def describe(self) -> str:
        """Return the filters in words, e.g. 'segment = Retail, from 2024-01-01'."""
        parts = [
            f"{k.replace('_', ' ')} = {v}"
            for k, v in self.model_dump(exclude_none=True).items()
            if k not in ("date_from", "date_to")
        ]
        if self.date_from:
            parts.append(f"from {self.date_from}")
        if self.date_to:
            parts.append(f"to {self.date_to}")
        return ", ".join(parts) or "all records"


Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Metric:
    """One catalog entry. `sql` holds `{where}` where the filters go."""

    id: str
    title: str
    description: str
    sql: str
    parameters: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    reshape: Callable[[Rows], Rows] | None = None

    def bind(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return the metric's parameters with defaults filled and unknown names refused."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            allowed = ", ".join(self.parameters) or "none"
            raise ValueError(
                f"Metric {self.id!r} has no parameter {', '.join(unknown)}; allowed: {allowed}"
            )
        bound: dict[str, Any] = {}
        for name, (default, _doc) in self.parameters.items():
            value = params.get(name, default)
            try:
                bound[name] = type(default)(value)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"Parameter {name!r} of metric {self.id!r} must be a "
                    f"{type(default).__name__}; got {value!r}"
                ) from e
        return bound


_STATUS = "product_recommendation_status"
_ACCEPTED = f"CASE WHEN {_STATUS} = 'Accepted' THEN 1.0 ELSE 0.0 END"
_AFFINITY_BAND = (
    "CASE WHEN customer_product_affinity < 0.25 THEN 'Low (<0.25)' "
    "WHEN customer_product_affinity < 0.5 THEN 'Moderate (0.25-0.50)' "
    "WHEN customer_product_affinity < 0.75 THEN 'High (0.50-0.75)' "
    "ELSE 'Very high (>=0.75)' END"
)
_SCORE_BAND = (
    "CASE WHEN recommendation_score < 0.25 THEN 'Low (<0.25)' "
    "WHEN recommendation_score < 0.5 THEN 'Moderate (0.25-0.50)' "
    "WHEN recommendation_score < 0.75 THEN 'High (0.50-0.75)' "
    "ELSE 'Very high (>=0.75)' END"
)


def _status_counts() -> str:
    return (
        "count(*) AS records, "
        f"sum(CASE WHEN {_STATUS} = 'Accepted' THEN 1 ELSE 0 END) AS accepted, "
        f"sum(CASE WHEN {_STATUS} = 'Declined' THEN 1 ELSE 0 END) AS declined, "
        f"sum(CASE WHEN {_STATUS} = 'Pending' THEN 1 ELSE 0 END) AS pending, "
        f"sum(CASE WHEN {_STATUS} = 'In Progress' THEN 1 ELSE 0 END) AS in_progress, "
        f"avg({_ACCEPTED}) AS acceptance_rate, "
        f"avg(CASE WHEN {_STATUS} = 'Declined' THEN 1.0 ELSE 0.0 END) AS decline_rate"
    )


def _correlation_sql() -> str:
    cols = NUMERIC_COLUMNS
    sums = ["count(*) AS n"]
    for c in cols:
        sums.append(f"sum(CAST({c} AS DOUBLE)) AS s_{c}")
        sums.append(f"sum(CAST({c} AS DOUBLE) * {c}) AS ss_{c}")
    for a, b in combinations(cols, 2):
        sums.append(f"sum(CAST({a} AS DOUBLE) * {b}) AS sp_{a}__{b}")
    rs = []
    for a, b in combinations(cols, 2):
        num = f"n * sp_{a}__{b} - s_{a} * s_{b}"
        den = f"sqrt((n * ss_{a} - s_{a} * s_{a}) * (n * ss_{b} - s_{b} * s_{b}))"
        rs.append(f"({num}) / NULLIF({den}, 0) AS r__{a}__{b}")
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in cols)
    return (
        f"WITH sums AS (SELECT {', '.join(sums)} FROM fpr_records "
        f"WHERE ({{where}}) AND {not_null}) "
        f"SELECT n, {', '.join(rs)} FROM sums"
    )


def _correlation_rows(rows: Rows) -> Rows:
    """Turn the one-row result (n, r__a__b, ...) into one row per column pair."""
    if not rows:
        return []
    row = rows[0]
    out = []
    for key, value in row.items():
        if key.startswith("r__"):
            a, b = key[3:].split("__")
            out.append({"column_a": a, "column_b": b, "r": value, "n": row["n"]})
    return sorted(out, key=lambda r: -abs(r["r"] or 0.0))


CATALOG: dict[str, Metric] = {}


def _register(metric: Metric) -> Metric:
    CATALOG[metric.id] = metric
    return metric


KPIS = _register(
    Metric(
        "kpis",
        "Key performance indicators and financial metrics",
        "Records, average recommendation score, satisfaction and churn probability, total "
        "product sales, acceptance rate, and the financial metrics: average transaction "
        "value, account balance and transaction count (per record).",
        f"""SELECT count(*) AS records,
  avg(recommendation_score) AS avg_recommendation_score,
  avg(customer_satisfaction_score) AS avg_satisfaction_score,
  avg(customer_churn_probability) AS avg_churn_probability,
  sum(product_sales_amount) AS total_product_sales,
  avg({_ACCEPTED}) AS acceptance_rate,
  avg(customer_transaction_value) AS avg_transaction_value,
  avg(account_balance) AS avg_account_balance,
  avg(customer_transaction_count) AS avg_transaction_count,
  sum(customer_transaction_count) AS total_transaction_count
FROM fpr_records WHERE {{where}}""",
    )
)

DISTRIBUTIONS = _register(
    Metric(
        "distributions",
        "Distributions: recommendation status, affinity bands, lifecycle stages, "
        "top product types and top segments",
        "Record counts, share within the breakdown and product sales for each value of "
        "each breakdown, computed in one pass with GROUPING SETS; the top `top_n` values "
        "of each breakdown by records.",
        # One pass into status x band x stage x product x segment cells (at most 3,200),
        # then each breakdown is rolled up from the cells.
        f"""WITH base AS (
  SELECT {_STATUS} AS status, {_AFFINITY_BAND} AS affinity_band,
    customer_lifecycle_stage AS stage, product_type, customer_segment AS segment,
    count(*) AS n, sum(product_sales_amount) AS sales
  FROM fpr_records WHERE {{where}}
  GROUP BY ALL
), grouped AS (
  SELECT
    CASE WHEN grouping(status) = 0 THEN 'recommendation_status'
         WHEN grouping(affinity_band) = 0 THEN 'affinity_band'
         WHEN grouping(stage) = 0 THEN 'lifecycle_stage'
         WHEN grouping(product_type) = 0 THEN 'product_type'
         ELSE 'customer_segment' END AS dimension,
    COALESCE(CASE WHEN grouping(status) = 0 THEN status
         WHEN grouping(affinity_band) = 0 THEN affinity_band
         WHEN grouping(stage) = 0 THEN stage
         WHEN grouping(product_type) = 0 THEN product_type
         ELSE segment END, '(missing)') AS value,
    sum(n) AS records,
    sum(sales) AS product_sales
  FROM base
  GROUP BY GROUPING SETS ((status), (affinity_band), (stage), (product_type), (segment))
), ranked AS (
  SELECT dimension, value, records,
    CAST(records AS DOUBLE) / sum(records) OVER (PARTITION BY dimension) AS share,
    product_sales,
    row_number() OVER (PARTITION BY dimension ORDER BY records DESC, value) AS rank
  FROM grouped
)
SELECT dimension, value, records, share, product_sales, rank FROM ranked
WHERE rank <= :top_n ORDER BY dimension, rank""",
        {"top_n": (10, "How many values to keep per breakdown, by records")},
    )
)

SEGMENT_PROFILE = _register(
    Metric(
        "segment_profile",
        "Customer segment profile",
        "Per customer segment: records, average and median account "
        "balance, average transaction value and count, satisfaction, churn probability, "
        "acceptance rate and product sales.",
        f"""SELECT customer_segment, count(*) AS records,
  avg(account_balance) AS avg_account_balance,
  median(account_balance) AS median_account_balance,
  avg(customer_transaction_value) AS avg_transaction_value,
  avg(customer_transaction_count) AS avg_transaction_count,
  avg(customer_satisfaction_score) AS avg_satisfaction_score,
  avg(customer_churn_probability) AS avg_churn_probability,
  avg({_ACCEPTED}) AS acceptance_rate,
  sum(product_sales_amount) AS product_sales
FROM fpr_records WHERE {{where}}
GROUP BY customer_segment ORDER BY records DESC, customer_segment""",
    )
)

ACCEPTANCE = _register(
    Metric(
        "acceptance_rates",
        "Acceptance and decline rates by segment, lifecycle stage, product and band",
        "Counts per recommendation status with acceptance and decline rates, average "
        "affinity and score, for each breakdown: segment, lifecycle_stage, product_type, "
        "affinity_band, score_band, segment x product_type and segment x lifecycle_stage x "
        "product_type (the `breakdown` column names it; columns outside it are empty). "
        "Groups with fewer than `min_records` records are left out.",
        # One pass over the table into at most 3,200 cells (segment x stage x product x
        # affinity band x score band), then every breakdown is rolled up from the cells.
        f"""WITH cells AS (
  SELECT customer_segment AS segment, customer_lifecycle_stage AS lifecycle_stage,
    product_type, {_AFFINITY_BAND} AS affinity_band, {_SCORE_BAND} AS score_band,
    count(*) AS n,
    sum(CASE WHEN {_STATUS} = 'Accepted' THEN 1 ELSE 0 END) AS n_accepted,
    sum(CASE WHEN {_STATUS} = 'Declined' THEN 1 ELSE 0 END) AS n_declined,
    sum(CASE WHEN {_STATUS} = 'Pending' THEN 1 ELSE 0 END) AS n_pending,
    sum(CASE WHEN {_STATUS} = 'In Progress' THEN 1 ELSE 0 END) AS n_in_progress,
    sum(customer_product_affinity) AS sum_affinity,
    count(customer_product_affinity) AS n_affinity,
    sum(recommendation_score) AS sum_score,
    count(recommendation_score) AS n_score
  FROM fpr_records WHERE {{where}}
  GROUP BY ALL
)
SELECT
  CASE WHEN grouping(segment) + grouping(lifecycle_stage) + grouping(product_type) = 0
         THEN 'segment_stage_product'
       WHEN grouping(segment) + grouping(product_type) = 0 THEN 'segment_product'
       WHEN grouping(segment) = 0 THEN 'segment'
       WHEN grouping(lifecycle_stage) = 0 THEN 'lifecycle_stage'
       WHEN grouping(product_type) = 0 THEN 'product_type'
       WHEN grouping(affinity_band) = 0 THEN 'affinity_band'
       ELSE 'score_band' END AS breakdown,
  segment, lifecycle_stage, product_type, affinity_band, score_band,
  sum(n) AS records, sum(n_accepted) AS accepted, sum(n_declined) AS declined,
  sum(n_pending) AS pending, sum(n_in_progress) AS in_progress,
  sum(n_accepted) / sum(n) AS acceptance_rate,
  sum(n_declined) / sum(n) AS decline_rate,
  sum(sum_affinity) / NULLIF(sum(n_affinity), 0) AS avg_affinity,
  sum(sum_score) / NULLIF(sum(n_score), 0) AS avg_score
FROM cells
GROUP BY GROUPING SETS ((segment), (lifecycle_stage), (product_type), (affinity_band),
  (score_band), (segment, product_type), (segment, lifecycle_stage, product_type))
HAVING sum(n) >= :min_records
ORDER BY breakdown, segment, lifecycle_stage, product_type, affinity_band, score_band""",
        {"min_records": (1, "Smallest group size to report")},
    )
)

CORRELATIONS = _register(
    Metric(
        "correlations",
        "Correlations between the numeric columns",
        "Pearson correlation of every pair of numeric columns, from one pass of sums "
        "(rows with a missing numeric value are left out); one row per pair, strongest "
        "first.",
        _correlation_sql(),
        reshape=_correlation_rows,
    )
)

REVENUE = _register(
    Metric(
        "revenue",
        "Product sales revenue by product type and segment",
        "Accepted recommendations, total and average sale, and share of all sales, by "
        "product_type, by customer_segment and by both (`breakdown` names it).",
        f"""WITH grouped AS (
  SELECT
    CASE WHEN grouping(product_type) + grouping(customer_segment) = 0 THEN 'product_segment'
         WHEN grouping(product_type) = 0 THEN 'product_type'
         ELSE 'segment' END AS breakdown,
    product_type, customer_segment,
    count(*) AS records,
    sum(CASE WHEN {_STATUS} = 'Accepted' THEN 1 ELSE 0 END) AS accepted,
    sum(product_sales_amount) AS total_sales,
    avg(CASE WHEN {_STATUS} = 'Accepted' THEN product_sales_amount END) AS avg_sale
  FROM fpr_records WHERE {{where}}
  GROUP BY GROUPING SETS ((product_type), (customer_segment), (product_type, customer_segment))
)
SELECT breakdown, product_type, customer_segment, records, accepted, total_sales, avg_sale,
  total_sales / NULLIF(sum(total_sales) OVER (PARTITION BY breakdown), 0) AS share_of_sales
FROM grouped ORDER BY breakdown, total_sales DESC, product_type, customer_segment""",
    )
)

VALUE_AT_RISK = _register(
    Metric(
        "value_at_risk",
        "Churn-weighted value at risk",
        "Per customer (latest record by last_updated_epoch): account balance and product "
        "sales weighted by churn probability, summed overall, by segment and by lifecycle "
        "stage; with customers at high risk (churn probability >= `high_risk`).",
        # Segment and stage are carried through the per-customer step as a small integer
        # profile code: arg_max over strings costs twice as much as the whole rest.
        """WITH profiles AS (
  SELECT seg, stage, row_number() OVER (ORDER BY seg, stage) AS profile
  FROM (
    SELECT DISTINCT customer_segment AS seg, customer_lifecycle_stage AS stage
    FROM fpr_records WHERE {where}
  ) AS d
), customers AS (
  SELECT customer_id,
    arg_max(p.profile, last_updated_epoch) AS profile,
    arg_max(account_balance, last_updated_epoch) AS account_balance,
    arg_max(customer_churn_probability, last_updated_epoch) AS churn_probability,
    sum(product_sales_amount) AS product_sales
  FROM fpr_records JOIN profiles AS p
    ON p.seg IS NOT DISTINCT FROM customer_segment
    AND p.stage IS NOT DISTINCT FROM customer_lifecycle_stage
  WHERE {where}
  GROUP BY customer_id
), cells AS (
  SELECT profile, count(*) AS customers,
    sum(account_balance) AS total_balance,
    sum(account_balance * churn_probability) AS balance_at_risk,
    sum(product_sales * churn_probability) AS sales_at_risk,
    sum(churn_probability) AS sum_churn, count(churn_probability) AS n_churn,
    sum(CASE WHEN churn_probability >= :high_risk THEN 1 ELSE 0 END) AS high_risk
  FROM customers GROUP BY profile
)
SELECT
  CASE WHEN grouping(p.seg) = 0 THEN 'segment'
       WHEN grouping(p.stage) = 0 THEN 'lifecycle_stage'
       ELSE 'total' END AS breakdown,
  p.seg AS customer_segment, p.stage AS customer_lifecycle_stage,
  sum(c.customers) AS customers,
  sum(c.total_balance) AS total_balance,
  sum(c.balance_at_risk) AS balance_at_risk,
  sum(c.sales_at_risk) AS sales_at_risk,
  sum(c.sum_churn) / NULLIF(sum(c.n_churn), 0) AS avg_churn_probability,
  sum(c.high_risk) AS high_risk_customers
FROM cells AS c JOIN profiles AS p ON p.profile = c.profile
GROUP BY GROUPING SETS ((), (p.seg), (p.stage))
ORDER BY breakdown, balance_at_risk DESC""",
        {"high_risk": (0.6, "Churn probability from which a customer counts as high risk")},
    )
)

CHURN_BY_SATISFACTION = _register(
    Metric(
        "churn_by_satisfaction",
        "Churn probability by satisfaction band",
        "Records, average satisfaction and average churn probability in satisfaction "
        "bands of width 0.2.",
        """WITH banded AS (
  SELECT least(floor(customer_satisfaction_score * 5), 4) AS band,
    customer_satisfaction_score, customer_churn_probability
  FROM fpr_records WHERE {where}
)
SELECT CAST(band * 0.2 AS DECIMAL(3, 1)) AS satisfaction_from,
  CAST(band * 0.2 + 0.2 AS DECIMAL(3, 1)) AS satisfaction_to,
  count(*) AS records,
  avg(customer_satisfaction_score) AS avg_satisfaction_score,
  avg(customer_churn_probability) AS avg_churn_probability
FROM banded GROUP BY band ORDER BY band""",
    )
)

MONTHLY_TREND = _register(
    Metric(
        "monthly_trend",
        "Recommendations and acceptance by month",
        "Per month of product_recommendation_date: records, accepted, acceptance rate, "
        "product sales, average score and affinity.",
        # Days first (547 groups, no date arithmetic per row), then months from the days.
        f"""WITH days AS (
  SELECT product_recommendation_date AS day, count(*) AS n,
    sum(CASE WHEN {_STATUS} = 'Accepted' THEN 1 ELSE 0 END) AS n_accepted,
    sum(product_sales_amount) AS sales,
    sum(recommendation_score) AS sum_score, count(recommendation_score) AS n_score,
    sum(customer_product_affinity) AS sum_affinity,
    count(customer_product_affinity) AS n_affinity
  FROM fpr_records WHERE {{where}}
  GROUP BY product_recommendation_date
)
SELECT CAST(date_trunc('month', day) AS DATE) AS month,
  sum(n) AS records,
  sum(n_accepted) AS accepted,
  sum(n_accepted) / sum(n) AS acceptance_rate,
  sum(sales) AS product_sales,
  sum(sum_score) / NULLIF(sum(n_score), 0) AS avg_score,
  sum(sum_affinity) / NULLIF(sum(n_affinity), 0) AS avg_affinity
FROM days GROUP BY 1 ORDER BY 1""",
    )
)

UNCONVERTED = _register(
    Metric(
        "high_affinity_unconverted",
        "High-affinity recommendations not converted",
        "Recommendations with affinity >= `min_affinity` that are not Accepted, by "
        "product_type, by segment and overall (`breakdown`), with the sales they would "
        "bring at the average accepted sale of their product type.",
        # One pass into product x segment x status x high-affinity cells; the average
        # accepted sale per product and the pool are both rolled up from the cells.
        f"""WITH cells AS (
  SELECT product_type, customer_segment, {_STATUS} AS status,
    customer_product_affinity >= :min_affinity AS high_affinity,
    count(*) AS n,
    sum(product_sales_amount) AS sales, count(product_sales_amount) AS n_sales,
    sum(customer_product_affinity) AS sum_affinity
  FROM fpr_records WHERE {{where}}
  GROUP BY ALL
), ticket AS (
  SELECT product_type, sum(sales) / NULLIF(sum(n_sales), 0) AS avg_sale
  FROM cells WHERE status = 'Accepted' GROUP BY product_type
)
SELECT
  CASE WHEN grouping(c.product_type) = 0 THEN 'product_type'
       WHEN grouping(c.customer_segment) = 0 THEN 'segment'
       ELSE 'total' END AS breakdown,
  c.product_type, c.customer_segment,
  sum(c.n) AS records,
  sum(CASE WHEN c.status = 'Pending' THEN c.n ELSE 0 END) AS pending,
  sum(CASE WHEN c.status = 'In Progress' THEN c.n ELSE 0 END) AS in_progress,
  sum(CASE WHEN c.status = 'Declined' THEN c.n ELSE 0 END) AS declined,
  sum(c.sum_affinity) / sum(c.n) AS avg_affinity,
  sum(c.n * COALESCE(t.avg_sale, 0)) AS potential_sales
FROM cells AS c LEFT JOIN ticket AS t ON t.product_type = c.product_type
WHERE c.high_affinity AND c.status <> 'Accepted'
GROUP BY GROUPING SETS ((), (c.product_type), (c.customer_segment))
ORDER BY breakdown, potential_sales DESC""",
        {"min_affinity": (0.7, "Affinity from which a recommendation counts as high")},
    )
)

DASHBOARD = ("kpis", "distributions")


class UnknownMetric(KeyError):
    """No metric has this id."""


def get_metric(metric_id: str) -> Metric:
    """Return the catalog entry `metric_id`, or raise UnknownMetric naming the ids."""
    try:
        return CATALOG[metric_id]
    except KeyError:
        raise UnknownMetric(
            f"No metric {metric_id!r}; the catalog has: {', '.join(CATALOG)}"
        ) from None


def run_metric(
    warehouse: Warehouse,
    metric_id: str,
    filters: Filters | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 120.0,
) -> Evidence:
    """Run one catalog metric in the warehouse and return its Evidence."""
    metric = get_metric(metric_id)
    filters = filters or Filters()
    where, where_params = filters.where()
    bound = {**metric.bind(params), **where_params}
    result = warehouse.run(metric.sql.format(where=where), bound, timeout_s=timeout_s)
    rows = as_records(result.columns, result.rows)
    if metric.reshape:
        rows = metric.reshape(rows)
    columns = list(rows[0]) if rows else result.columns
    return Evidence(
        metric_id=metric.id,
        title=metric.title,
        sql=result.sql,
        parameters={k: _jsonable(v) for k, v in bound.items()},
        columns=columns,
        rows=rows,
        row_count=len(rows),
        truncated=result.truncated,
        elapsed_ms=result.elapsed_ms,
        warehouse=warehouse.url,
    )


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.date) else value


def dashboard(warehouse: Warehouse, filters: Filters | None = None) -> dict[str, Evidence]:
    """Run the dashboard metrics (KPIs, financial metrics and distributions)."""
    return {m: run_metric(warehouse, m, filters) for m in DASHBOARD}
