"""Focus-area agents: one LangGraph graph per focus area."""
