"""The `fpr_records` table: its columns, types and documentation, defined once.

The generator, the loader, the guarded-SQL allow-list, the warehouse backends and the
docs all read this module, so a column is added or retyped in exactly one place.
The columns, their meaning and the range each number must lie in come from the FPR
source API contract; the loader rejects values outside them. The connector (which ships
alone and cannot import this module) checks the same ranges; a test keeps them agreeing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TABLE = "fpr_records"
PRIMARY_KEY = "record_id"

LogicalType = Literal["string", "date", "double", "bigint"]

# Logical type -> SQL type in the canonical (DuckDB) dialect; sqlglot transpiles it elsewhere.
SQL_TYPES: dict[LogicalType, str] = {
    "string": "VARCHAR",
    "date": "DATE",
    "double": "DOUBLE",
    "bigint": "BIGINT",
}


@dataclass(frozen=True)
class Column:
    """One column of `fpr_records`.

    A number (`double`, `bigint`) must be finite and lie within `low`..`high` (inclusive;
    None leaves that side open).
    """

    name: str
    type: LogicalType
    group: str
    description: str
    nullable: bool = False
    low: float | None = None
    high: float | None = None

    @property
    def sql_type(self) -> str:
        """The column's SQL type in the canonical dialect."""
        return SQL_TYPES[self.type]

    @property
    def range_text(self) -> str | None:
        """The allowed range in words ("0-1", "0 or more"); None when any value goes."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}"
        if self.low is not None:
            return f"{self.low:g} or more"
        if self.high is not None:
            return f"{self.high:g} or less"
        return None


COLUMNS: tuple[Column, ...] = (
    Column("record_id", "string", "Record", "Unique identifier for the record (primary key)"),
    Column("customer_id", "string", "Customer", "Unique identifier for the customer"),
    Column("customer_name", "string", "Customer", "Name of the customer"),
    Column("customer_email", "string", "Customer", "Email address of the customer"),
    Column("customer_segment", "string", "Customer", "Customer segment (e.g. Commercial, Retail)"),
    Column(
        "customer_lifecycle_stage", "string", "Customer", "Current stage of the customer lifecycle"
    ),
    Column(
        "customer_lifecycle_stage_transition_date",
        "date",
        "Customer",
        "Date of the last lifecycle stage transition",
    ),
    # No bound: an overdrawn account has a negative balance.
    Column("account_balance", "double", "Customer", "Current balance of the customer's account"),
    Column(
        "transaction_history", "string", "Transaction", "Summary of customer transaction history"
    ),
    Column(
        "customer_transaction_value",
        "double",
        "Transaction",
        "Value of the customer's recent transactions",
        low=0,
    ),
    Column(
        "customer_transaction_count",
        "bigint",
        "Transaction",
        "Number of recent transactions by the customer",
        low=0,
    ),
    Column("product_id", "string", "Product", "Unique identifier for the product"),
    Column("product_name", "string", "Product", "Name of the product"),
    Column("product_type", "string", "Product", "Type of the product (e.g. Loan, Credit Card)"),
    Column("product_terms", "string", "Product", "Terms and conditions of the product"),
    Column(
        "product_sales_amount",
        "double",
        "Product",
        "Amount for which the product was sold (0 when no sale was made)",
        low=0,
    ),
    Column(
        "product_sales_date",
        "date",
        "Product",
        "Date when the product was sold (empty when no sale was made)",
        nullable=True,
    ),
    Column("product_recommendation", "string", "Recommendation", "Recommended financial product"),
    Column(
        "product_recommendation_date",
        "date",
        "Recommendation",
        "Date when the product recommendation was made",
    ),
    Column(
        "product_recommendation_status",
        "string",
        "Recommendation",
        "Current status of the recommendation (Accepted, Pending, In Progress, Declined)",
    ),
    Column(
        "recommendation_score",
        "double",
        "Recommendation",
        "Score indicating the strength of the recommendation (0-1)",
        low=0,
        high=1,
    ),
    Column("customer_product_usage", "string", "Behaviour", "How the customer uses the product"),
    Column(
        "customer_product_usage_trend", "string", "Behaviour", "Trend in customer's product usage"
    ),
    Column(
        "customer_product_interests",
        "string",
        "Behaviour",
        "Products the customer has shown interest in",
    ),
    Column(
        "customer_product_affinity",
        "double",
        "Behaviour",
        "Measure of customer's preference for the product (0-1)",
        low=0,
        high=1,
    ),
    Column(
        "customer_product_affinity_trend",
        "string",
        "Behaviour",
        "Trend in customer's product affinity",
    ),
    Column(
        "customer_satisfaction_score",
        "double",
        "Outcome",
        "Score indicating customer satisfaction (0-1)",
        low=0,
        high=1,
    ),
    Column(
        "customer_churn_probability",
        "double",
        "Outcome",
        "Probability of the customer leaving (0-1)",
        low=0,
        high=1,
    ),
    Column(
        "last_updated_epoch",
        "bigint",
        "Record",
        "Epoch seconds of the record's last update at the source",
        low=0,
    ),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

# Columns Fivetran adds on landing. `_fivetran_deleted = true` marks a row deleted at the
# source: such rows are hidden from every query (see `tools.warehouse`).
FIVETRAN_SYNCED = "_fivetran_synced"
FIVETRAN_DELETED = "_fivetran_deleted"
SYSTEM_COLUMNS: dict[str, str] = {FIVETRAN_SYNCED: "TIMESTAMP", FIVETRAN_DELETED: "BOOLEAN"}

NUMERIC_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.type in ("double", "bigint"))

# Vocabularies the dashboard and the agents group by. Real data may hold other values;
# these are what the generator produces and what filters are checked against by default.
SEGMENTS = ("Retail", "Small Business", "Commercial", "Wealth Management", "Student")
LIFECYCLE_STAGES = ("Lead", "Onboarding", "Engaged", "Converted", "Inactive")
RECOMMENDATION_STATUSES = ("Accepted", "Pending", "In Progress", "Declined")
PRODUCT_TYPES = (
    "Checking Account",
    "Savings Account",
    "Credit Card",
    "Personal Loan",
    "Mortgage",
    "Auto Loan",
    "Investment Account",
    "Insurance",
)


def create_table_sql(table: str = TABLE) -> str:
    """Return the CREATE TABLE statement for `fpr_records` in the canonical dialect.

    `record_id` is the key, but no index enforces it here: DuckDB's index doubled the time
    to write 10 M rows. Uniqueness is guaranteed by the generator, checked by the loader
    and kept by the connector's upserts.
    """
    cols = [f"{c.name} {c.sql_type}{'' if c.nullable else ' NOT NULL'}" for c in COLUMNS]
    return f"CREATE TABLE {table} (\n  " + ",\n  ".join(cols) + "\n)"


def markdown_table() -> str:
    """Render the schema as a markdown table (for docs and for models)."""
    lines = ["| column | type | group | description |", "|---|---|---|---|"]
    for c in COLUMNS:
        nullable = ", nullable" if c.nullable else ""
        lines.append(f"| `{c.name}` | {c.type}{nullable} | {c.group} | {c.description} |")
    return "\n".join(lines)
