"""The ROADMAP loss family: SupAP, SmoothAP, calibration, their sum, and exact AP.

Each loss comes as a class (``keras.losses.Loss``, serializable, cross-replica aware) and as a
function of the same name in snake case (``roadmap``, ``supap``, ``smooth_ap``,
``calibration``), as Keras pairs ``keras.losses.Circle`` with ``keras.losses.circle``. The
functions take an optional reference set (``ref_y_true``, ``ref_y_pred``): the classes'
``call_with_reference``.
"""

from keras_roadmap.losses.ap_losses import (
    INATURALIST_SUPAP,
    SmoothAPLoss,
    SupAPLoss,
    heaviside_average_precision,
    smooth_ap,
    supap,
)
from keras_roadmap.losses.base import Pairs, RetrievalLoss, sum_of_ratios
from keras_roadmap.losses.calibration import CalibrationLoss, calibration
from keras_roadmap.losses.cluster import (
    ClusterLoss,
    ClusterProxies,
    ROADMAPPlusPlusLoss,
    cluster_loss,
    roadmap_plus_plus,
)

# issue 23: HAPPIER's H-AP and the Recall@k surrogate (imported here so they register for loading)
from keras_roadmap.losses.happier import HAPPIERLoss
from keras_roadmap.losses.hierarchical import HAPLoss, hap_loss
from keras_roadmap.losses.ndcg import SupNDCGLoss, supndcg
from keras_roadmap.losses.parameters import CALIBRATION_DEFAULTS, SUPAP_DEFAULTS, SUPAP_PRESETS
from keras_roadmap.losses.recall import SupRecallLoss, suprecall
from keras_roadmap.losses.recall_surrogate import RecallAtKLoss, recall_at_k, simix
from keras_roadmap.losses.roadmap import ROADMAPLoss, roadmap
from keras_roadmap.losses.roadndcg import ROADNDCGLoss

__all__ = [
    "suprecall",
    "supndcg",
    "roadmap_plus_plus",
    "cluster_loss",
    "SupRecallLoss",
    "SupNDCGLoss",
    "ROADNDCGLoss",
    "ROADMAPPlusPlusLoss",
    "ClusterProxies",
    "ClusterLoss",
    "HAPLoss",
    "HAPPIERLoss",
    "RecallAtKLoss",
    "hap_loss",
    "recall_at_k",
    "simix",
    "CALIBRATION_DEFAULTS",
    "CalibrationLoss",
    "INATURALIST_SUPAP",
    "Pairs",
    "ROADMAPLoss",
    "RetrievalLoss",
    "SUPAP_DEFAULTS",
    "SUPAP_PRESETS",
    "SmoothAPLoss",
    "SupAPLoss",
    "calibration",
    "heaviside_average_precision",
    "roadmap",
    "smooth_ap",
    "supap",
    "sum_of_ratios",
]
