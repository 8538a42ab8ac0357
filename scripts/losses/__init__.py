"""Training objectives of UM-ProtoShare (Section 2.3, Appendix B; SPEC §3).

One pure function per term (``terms``, ``localisation``) and two thin composites
(``composite``): :class:`Stage1Loss` (Eq. 1/19) and :class:`LastLayerLoss` (Eq. 3/21).
The functions take plain tensors and callables, so they do not depend on the model class.
"""

from __future__ import annotations

from scripts.faces import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "ClassificationLoss": "composite",
        "LastLayerLoss": "composite",
        "MAPPING_LOSS_KINDS": "composite",
        "MAP_RATIOS": "composite",
        "Stage1Loss": "composite",
        "LSE_SHARPNESS": "localisation",
        "lse_pool": "localisation",
        "mapping_loss": "localisation",
        "multiscale_mapping_loss": "localisation",
        "online_cam_logits": "localisation",
        "resize_spatial": "localisation",
        "scale_agreement_loss": "localisation",
        "CLASSIFICATION_LOSSES": "terms",
        "CLUSTERING_FORMS": "terms",
        "classification_loss": "terms",
        "clustering_loss_class_specific": "terms",
        "clustering_loss_shared": "terms",
        "clustering_loss_shared_max": "terms",
        "clustering_loss_shared_mean": "terms",
        "diversity_loss": "terms",
        "forget_loss": "terms",
        "inverse_frequency_weights": "terms",
        "l1_regularisation": "terms",
        "separation_loss_class_specific": "terms",
        "separation_loss_shared": "terms",
        "separation_loss_shared_max": "terms",
        "separation_loss_shared_mean": "terms",
    },
)
