"""Data access: the fpr_records schema, warehouses, metric catalog, SQL guard and tools."""
