"""From predictions to findings (notebooks 02-06): statistics, score tables and contrasts, claims, attention
statistics, mask FLOPs, cross-benchmark tables, plots and the study report."""
