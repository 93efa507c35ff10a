"""rws: add, scale, mix and take off robustness of trained vision models without retraining.

Where things live:
    rws.data         datamodules, dataset readers, decoded-image cache, embedded digits
    rws.corruptions  the 19 common corruptions (CIFAR / ImageNet parameter tables)
    rws.attacks      threat models and adversarial attacks (PGD, l1-APGD, FGSM variants)
    rws.models       create_model factory (timm + CIFAR variants), layer order rules
    rws.methods      LightningModules: nominal, corruption, adversarial training
    rws.weights      export I/O, state-dict arithmetic, signatures, soups, model specs
    rws.evaluation   evaluation suites, metrics, long-format results
    rws.stages       post-hoc entry points: extract, patch, storage report
    rws.report       tables and figures built from result files
    rws.pipelines    multi-step drivers (quickstart, CPU-scale paper presets)
"""

__version__ = "0.1.0"
