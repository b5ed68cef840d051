"""Deterministic synthetic `fpr_records`, generated inside DuckDB.

Rows are computed by one vectorised INSERT ... SELECT over `range(n)`: every random draw
is a hash of (row or customer index, seed, draw number), so the same `--rows` and `--seed`
give the same table on any machine, and nothing is built row by row in Python.

Each record is one product recommendation made to a customer. Customer attributes
(segment, lifecycle stage, balance, satisfaction, churn, transactions) are drawn from the
customer index, so a customer with several records has the same profile in each.

Relationships planted in the data (each has a strength in `Relationships`; all are zero in
`Relationships.none()`, which gives a table where no column drives another):

- **segment drives balances**: the median account balance is 1,500 (Student), 6,000
  (Retail), 40,000 (Small Business), 150,000 (Commercial) and 400,000 (Wealth Management),
  log-normal around it; transaction ticket sizes and sale amounts scale with it too.
- **affinity drives acceptance**: the log-odds of a recommendation being Accepted rise by
  4.0 per unit of `customer_product_affinity` (with the default seed at 20,000 rows: 18%
  accepted at affinity 0.2-0.4 against 70% at 0.8-1.0).
- **lifecycle stage drives acceptance and churn**: Converted and Engaged customers accept
  more, Lead and Inactive ones less; Inactive customers churn more and transact rarely.
- **satisfaction drives churn**: `customer_churn_probability` falls by 0.8 per unit of
  `customer_satisfaction_score`.
- **transaction value tracks activity**: `customer_transaction_value` is the transaction
  count times a ticket size that grows with the balance, so value correlates with both.
- **the score tracks affinity**: `recommendation_score` is 55% affinity, 45% noise, so
  personalised scores predict acceptance.
- **a lagging cell**: Small Business customers offered a Personal Loan accept far less
  than their affinity predicts (log-odds -1.5): the inefficiency an optimisation analysis
  should find.

Sales are recorded only for Accepted recommendations (`product_sales_amount` 0 and
`product_sales_date` empty otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tools.schema import LIFECYCLE_STAGES, PRODUCT_TYPES, SEGMENTS

DEFAULT_ROWS = 750
DEFAULT_SEED = 42
MAX_ROWS = 200_000_000

# Key layout of a draw: seed * 2**44 + index * 4096 + draw number (< 4096).
_DRAWS = 4096
_SEED_STRIDE = 2**44
MAX_SEED = 2**63 // _SEED_STRIDE - 1

# Epoch of the sample record's last update; generated records are updated within 30 days of it.
BASE_EPOCH = 1_748_797_200


@dataclass(frozen=True)
class Relationships:
    """Strengths of the relationships planted in generated data (1.0 = documented strength)."""

    segment_balance: float = 1.0
    affinity_acceptance: float = 1.0
    stage_effects: float = 1.0
    satisfaction_churn: float = 1.0
    score_tracks_affinity: float = 1.0
    value_tracks_activity: float = 1.0
    lagging_cell: tuple[str, str, float] | None = ("Small Business", "Personal Loan", -1.5)

    @classmethod
    def none(cls) -> Relationships:
        """Return strengths that plant nothing: every column independent of the others."""
        return cls(
            segment_balance=0.0,
            affinity_acceptance=0.0,
            stage_effects=0.0,
            satisfaction_churn=0.0,
            score_tracks_affinity=0.0,
            value_tracks_activity=0.0,
            lagging_cell=None,
        )


_SEGMENT_WEIGHTS = dict(zip(SEGMENTS, (0.40, 0.20, 0.15, 0.10, 0.15), strict=True))
_SEGMENT_MEDIAN_BALANCE = dict(zip(SEGMENTS, (6_000, 40_000, 150_000, 400_000, 1_500), strict=True))
_SEGMENT_TICKET = dict(zip(SEGMENTS, (45, 300, 1_200, 500, 20), strict=True))
_SEGMENT_SALE_MULTIPLIER = dict(zip(SEGMENTS, (1.0, 1.8, 3.0, 4.0, 0.4), strict=True))
_STAGE_WEIGHTS = dict(zip(LIFECYCLE_STAGES, (0.15, 0.15, 0.35, 0.20, 0.15), strict=True))
_STAGE_ACCEPT_LOGIT = dict(zip(LIFECYCLE_STAGES, (-0.5, 0.0, 0.3, 0.8, -1.0), strict=True))
_STAGE_CHURN = dict(zip(LIFECYCLE_STAGES, (0.05, 0.0, -0.05, -0.08, 0.25), strict=True))
_STAGE_TXN_COUNT = dict(zip(LIFECYCLE_STAGES, (10, 20, 45, 55, 4), strict=True))
_STAGE_SATISFACTION = {"Inactive": -0.15, "Converted": 0.08}
_STAGE_AFFINITY = dict(zip(LIFECYCLE_STAGES, (0.0, 0.02, 0.05, 0.10, -0.10), strict=True))
_PRODUCT_WEIGHTS = dict(
    zip(PRODUCT_TYPES, (0.18, 0.16, 0.20, 0.10, 0.06, 0.08, 0.10, 0.12), strict=True)
)
_PRODUCT_SALE = dict(
    zip(
        PRODUCT_TYPES,
        (500, 5_000, 2_500, 15_000, 250_000, 28_000, 40_000, 1_800),
        strict=True,
    )
)
_PRODUCT_TERMS = {
    "Checking Account": ("No Monthly Fee", "Overdraft Protection Included"),
    "Savings Account": ("4.1% APY Variable", "No Minimum Balance"),
    "Credit Card": ("19.9% APR, No Annual Fee", "0% Intro APR for 15 Months"),
    "Personal Loan": ("No Collateral Required", "36-Month Fixed Rate"),
    "Mortgage": ("30-Year Fixed Rate", "5/1 Adjustable Rate"),
    "Auto Loan": ("60-Month Fixed Rate", "No Prepayment Penalty"),
    "Investment Account": ("0.25% Annual Advisory Fee", "Commission-Free Trades"),
    "Insurance": ("Annual Premium, Cancel Anytime", "Monthly Premium, 12-Month Term"),
}
_TIERS = ("Essential", "Plus", "Premier", "Select", "Elite")
_CHANNELS = ("card payments", "direct debits", "transfers", "cash withdrawals", "mobile payments")
_TRENDS = ("Increasing", "Stable", "Decreasing")


def check_seed(seed: int) -> int:
    """Return `seed` if the generator can use it, else raise ValueError saying the range."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"--seed must be between 0 and {MAX_SEED}; got {seed}")
    return int(seed)


def check_rows(rows: int) -> int:
    """Return `rows` if the generator can make that many, else raise ValueError."""
    if not 1 <= int(rows) <= MAX_ROWS:
        raise ValueError(f"--rows must be between 1 and {MAX_ROWS:,}; got {rows}")
    return int(rows)


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pick(u: str, weights: Mapping[str, float]) -> str:
    """Return a CASE expression choosing a key of `weights` by the uniform draw `u`."""
    total = sum(weights.values())
    acc = 0.0
    parts = []
    keys = list(weights)
    for key in keys[:-1]:
        acc += weights[key] / total
        parts.append(f"WHEN {u} < {acc!r} THEN {_q(key)}")
    return f"CASE {' '.join(parts)} ELSE {_q(keys[-1])} END"


def _map(expr: str, values: Mapping[str, float], default: float = 0.0) -> str:
    """Return a CASE expression mapping the text `expr` to a number."""
    # DuckDB reads 0.5 as a DECIMAL; typed literals keep the arithmetic in DOUBLE.
    parts = " ".join(f"WHEN {_q(k)} THEN {float(v)!r}::DOUBLE" for k, v in values.items())
    return f"(CASE {expr} {parts} ELSE {float(default)!r}::DOUBLE END)"


def _index(u: str, options: Sequence[str]) -> str:
    """Return an expression choosing one of `options` uniformly by the draw `u`."""
    items = ", ".join(_q(o) for o in options)
    return f"([{items}])[1 + least(floor({u} * {len(options)}), {len(options) - 1})::BIGINT]"


def _clamp(expr: str, lo: float, hi: float) -> str:
    return f"greatest({lo!r}, least({hi!r}, {expr}))"


def setup_sql(rows: int, seed: int) -> list[str]:
    """Return the statements to run before `select_sql`: the row ids and the draw macros."""
    seed = check_seed(seed)
    rows = check_rows(rows)
    return [
        # range() is a single-threaded source; a scan of a materialised id table is not,
        # which halves generation time on two cores.
        f"CREATE OR REPLACE TEMP TABLE fm_ids AS SELECT range AS i FROM range({rows})",
        # 53 high bits of a 64-bit hash -> uniform [0, 1). One BIGINT key per (seed, index,
        # draw): hash() of several arguments combines them too weakly (draws k and k+1 of a
        # row came out 0.9 correlated), while the single-value hash mixes fully.
        "CREATE OR REPLACE TEMP MACRO fm_u(x, k) AS "
        f"((hash(x * {_DRAWS} + k + {seed * _SEED_STRIDE}) >> 11)::DOUBLE / 9007199254740992.0)",
        # Box-Muller on two independent uniforms -> standard normal.
        "CREATE OR REPLACE TEMP MACRO fm_z(x, k) AS "
        "(sqrt(-2.0 * ln(fm_u(x, k) + 1e-12)) * cos(2.0 * pi() * fm_u(x, k + 1000)))",
    ]


def select_sql(rows: int, seed: int, rel: Relationships | None = None) -> str:
    """Return the SELECT producing `rows` synthetic records in schema column order.

    Run the statements of `setup_sql(rows, seed)` on the same connection first.
    """
    rel = rel or Relationships()
    rows = check_rows(rows)
    customers = max(1, (rows * 4) // 5)
    flat_balance = 20_000.0

    def seg_balance(seg: str) -> str:
        # Interpolate each segment's log-median towards a common one as the strength falls.
        parts = []
        for name, median in _SEGMENT_MEDIAN_BALANCE.items():
            log_m = (1 - rel.segment_balance) * math.log(flat_balance) + rel.segment_balance * (
                math.log(median)
            )
            parts.append(f"WHEN {_q(name)} THEN {log_m!r}")
        return f"(CASE {seg} {' '.join(parts)} ELSE {math.log(flat_balance)!r} END)"

    def scaled(values: Mapping[str, float], strength: float) -> dict[str, float]:
        return {k: v * strength for k, v in values.items()}

    def blend(values: Mapping[str, float], strength: float, neutral: float) -> dict[str, float]:
        return {k: neutral + (v - neutral) * strength for k, v in values.items()}

    lag = "0.0"
    if rel.lagging_cell:
        lag_seg, lag_prod, lag_logit = rel.lagging_cell
        lag = (
            f"(CASE WHEN segment = {_q(lag_seg)} AND ptype = {_q(lag_prod)} "
            f"THEN {float(lag_logit)!r} ELSE 0.0 END)"
        )

    mean_ticket = sum(_SEGMENT_TICKET.values()) / len(_SEGMENT_TICKET)
    mean_mult = sum(_SEGMENT_SALE_MULTIPLIER.values()) / len(_SEGMENT_SALE_MULTIPLIER)
    mean_count = sum(_STAGE_TXN_COUNT.values()) / len(_STAGE_TXN_COUNT)
    stages = rel.stage_effects
    tier_idx = f"least(floor(fm_u(i, 11) * {len(_TIERS)}), {len(_TIERS) - 1})::BIGINT"
    sat_stage = _map("stage", scaled(_STAGE_SATISFACTION, stages))
    satisfaction = _clamp(f"0.65 + 0.18 * z_sat + {sat_stage}", 0.01, 0.99)
    count_mean = _map("stage", blend(_STAGE_TXN_COUNT, stages, mean_count))
    churn_stage = _map("stage", scaled(_STAGE_CHURN, stages))
    churn_slope = 0.8 * rel.satisfaction_churn
    churn = _clamp(
        f"0.30 - {churn_slope!r} * (satisfaction - 0.65) + {churn_stage} + 0.10 * z_churn",
        0.01,
        0.99,
    )
    affinity_stage = _map("stage", scaled(_STAGE_AFFINITY, stages))
    affinity = _clamp(f"0.5 + 0.2 * fm_z(i, 12) + {affinity_stage}", 0.0, 1.0)
    w_aff = 0.55 * rel.score_tracks_affinity
    score = _clamp(f"{w_aff!r} * affinity + {1 - w_aff!r} * u_score", 0.0, 1.0)
    accept_stage = _map("stage", scaled(_STAGE_ACCEPT_LOGIT, stages))
    accept_slope = 4.0 * rel.affinity_acceptance
    ticket = _map("segment", blend(_SEGMENT_TICKET, rel.segment_balance, mean_ticket))
    type_index = _map("ptype", {p: float(k) for k, p in enumerate(PRODUCT_TYPES)})
    product_id = f"({type_index}::BIGINT * {len(_TIERS)} + tier)"
    tier_name = f"([{', '.join(_q(t) for t in _TIERS)}])[1 + tier]"
    terms = " ".join(
        f"WHEN ptype = {_q(p)} THEN (CASE WHEN u_terms < 0.5 THEN {_q(a)} ELSE {_q(b)} END)"
        for p, (a, b) in _PRODUCT_TERMS.items()
    )
    sale_base = _map("ptype", _PRODUCT_SALE)
    # At strength w the value's count and balance noise are w parts the customer's own and
    # (1 - w) parts independent draws; at 0 the value is independent of count and balance.
    w_val = rel.value_tracks_activity
    indep_count = f"greatest(0, round({count_mean} * exp(0.4 * z_val_cnt)))"
    value_count = f"({w_val!r} * txn_count + {1 - w_val!r} * {indep_count})"
    value_z = f"({w_val!r} * z_bal + {math.sqrt(max(0.0, 1 - w_val**2))!r} * z_val_bal)"
    sale_mult = _map("segment", blend(_SEGMENT_SALE_MULTIPLIER, rel.segment_balance, mean_mult))

    return f"""
WITH base AS (
  SELECT i, least(floor(fm_u(i, 1) * {customers}), {customers - 1})::BIGINT AS c
  FROM fm_ids
), cust AS (
  SELECT i, c,
    {_pick("fm_u(c, 2)", _SEGMENT_WEIGHTS)} AS segment,
    {_pick("fm_u(c, 3)", _STAGE_WEIGHTS)} AS stage,
    fm_z(c, 4) AS z_sat, fm_z(c, 5) AS z_churn, fm_z(c, 6) AS z_bal, fm_z(c, 7) AS z_cnt,
    fm_z(c, 23) AS z_val_cnt, fm_z(c, 24) AS z_val_bal,
    fm_u(c, 8) AS u_channel, fm_u(c, 9) AS u_days
  FROM base
), cust2 AS (
  SELECT *,
    {satisfaction} AS satisfaction,
    round(exp({seg_balance("segment")} + 0.9 * z_bal), 2) AS balance,
    greatest(0, round({count_mean} * exp(0.4 * z_cnt)))::BIGINT AS txn_count
  FROM cust
), cust3 AS (
  SELECT *,
    {churn} AS churn
  FROM cust2
), rec AS (
  SELECT *,
    {_pick("fm_u(i, 10)", _PRODUCT_WEIGHTS)} AS ptype,
    {tier_idx} AS tier,
    {affinity} AS affinity,
    fm_u(i, 13) AS u_score, fm_u(i, 14) AS u_accept, fm_u(i, 15) AS u_other,
    fm_z(i, 16) AS z_sale, fm_u(i, 17) AS u_rec_day, fm_u(i, 18) AS u_sale_day,
    fm_u(i, 19) AS u_interest, fm_u(i, 20) AS u_trend, fm_u(i, 21) AS u_terms,
    fm_u(i, 22) AS u_updated
  FROM cust3
), rec2 AS (
  SELECT *,
    {score} AS score,
    1.0 / (1.0 + exp(-(-0.9 + {accept_slope!r} * (affinity - 0.5)
      + {accept_stage} + {lag}))) AS p_accept,
    DATE '2024-01-01' + least(floor(u_rec_day * 547), 546)::INTEGER AS rec_date
  FROM rec
), rec3 AS (
  SELECT *,
    CASE WHEN u_accept < p_accept THEN 'Accepted'
         WHEN u_other < 0.45 THEN 'Declined'
         WHEN u_other < 0.75 THEN 'Pending'
         ELSE 'In Progress' END AS status
  FROM rec2
)
SELECT
  lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-a'
        || substr(h, 18, 3) || '-' || substr(h, 21, 12)) AS record_id,
  printf('CUST_%06d', c) AS customer_id,
  'Customer ' || (c + 1)::VARCHAR AS customer_name,
  'customer' || (c + 1)::VARCHAR || '@example.com' AS customer_email,
  segment AS customer_segment,
  stage AS customer_lifecycle_stage,
  rec_date - least(floor(u_days * 365), 364)::INTEGER
    AS customer_lifecycle_stage_transition_date,
  balance AS account_balance,
  txn_count::VARCHAR || ' transactions in the last 90 days, mostly '
    || {_index("u_channel", _CHANNELS)} AS transaction_history,
  round({value_count} * {ticket} * exp(0.3 * {value_z}), 2) AS customer_transaction_value,
  txn_count AS customer_transaction_count,
  printf('PROD_%06d', {product_id}) AS product_id,
  {tier_name} || ' ' || ptype AS product_name,
  ptype AS product_type,
  CASE {terms} END AS product_terms,
  CASE WHEN status = 'Accepted' THEN round({sale_base} * {sale_mult} * exp(0.35 * z_sale), 2)
    ELSE 0.0 END AS product_sales_amount,
  CASE WHEN status = 'Accepted'
    THEN rec_date + 1 + least(floor(u_sale_day * 45), 44)::INTEGER END AS product_sales_date,
  {tier_name} || ' ' || ptype AS product_recommendation,
  rec_date AS product_recommendation_date,
  status AS product_recommendation_status,
  round(score, 6) AS recommendation_score,
  CASE WHEN txn_count >= 40 THEN 'Daily' WHEN txn_count >= 20 THEN 'Weekly'
       WHEN txn_count >= 8 THEN 'Monthly' WHEN txn_count >= 1 THEN 'Occasional'
       ELSE 'Dormant' END AS customer_product_usage,
  CASE WHEN stage = 'Inactive' AND u_trend < 0.7 THEN 'Decreasing'
       ELSE {_index("u_trend", _TRENDS)} END AS customer_product_usage_trend,
  {_index("u_interest", PRODUCT_TYPES)} AS customer_product_interests,
  round(affinity, 6) AS customer_product_affinity,
  CASE WHEN affinity > 0.65 THEN 'Increasing' WHEN affinity < 0.35 THEN 'Decreasing'
       ELSE 'Stable' END AS customer_product_affinity_trend,
  round(satisfaction, 6) AS customer_satisfaction_score,
  round(churn, 6) AS customer_churn_probability,
  {BASE_EPOCH} + floor(u_updated * 2592000)::BIGINT AS last_updated_epoch
FROM (SELECT *, md5('{int(seed)}-' || i::VARCHAR) AS h FROM rec3)
"""
