"""The FinMatch dashboard: a Streamlit client of the agent endpoint (`make app`)."""
