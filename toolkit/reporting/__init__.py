"""From results to figures and reports: matplotlib plots and the HTML/Markdown report. Reads results, never a live engine."""
