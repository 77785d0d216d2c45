"""Judge templates (versioned ids), output parsing, and scorers."""
