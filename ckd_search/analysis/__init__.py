"""Reports that answer the switching question.

- ``results``: load search run directories (Ray ``**/result.json``) into trial and epoch tables;
- ``importance``: PED-ANOVA and fANOVA importances on an in-memory Optuna study;
- ``plots`` / ``report``: figures and the self-contained HTML + Markdown report;
- ``descriptors``: data-set descriptors and the RGB<->DVS gap (``RUN_DIR/descriptors.json``);
- ``fidelity``: rank correlation of low- vs full-budget trials (truncate vs compress);
- ``reproduce``: the paper's ablation table over seeds;
- ``tracking``: MLflow (report on a search's parent run; ablation runs).
"""
