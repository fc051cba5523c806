"""The self-contained evaluation report (``report.html``) and its figures."""
