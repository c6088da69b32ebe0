"""glae: facial age estimation (LAE and GLAE) on a C/CUDA engine.

All numerics live in the extension ``glae._C``; this package validates arguments, arranges
calls into it and presents the results.

Five-minute tour::

    import glae
    from glae.data import synthetic_faces, random_split

    images, ages = synthetic_faces(2400, size=64)             # or glae.data.prepare(...) on your faces
    tr, va = random_split(len(ages), (0.8, 0.2))
    model = glae.Model(backbone="resnet18", head="fr+pa", image_size=64,
                       batch_size=32, stage1_epochs=6, stage2_epochs=2,
                       base_lr1=0.005, base_lr2=0.002, linear_scaling=False)
    trainer = model.fit((images[tr], ages[tr]), (images[va], ages[va]))   # both stages
    pred = model.predict(images[va])                           # Adaptive Routing + flip averaging
    report = glae.metrics.report(ages[va], pred)               # MAE, CMAE, AAR, group MAE, ... (a dict)
    print(glae.plots.table({"routed": report}))                # the papers' table as text
    model.save("model.safetensors"); model = glae.load("model.safetensors")
"""
from ._lib import _C
from . import detect, metrics, plots
from .config import Config
from .losses import label_distribution
from .model import Model, load
from .pretraining import PretrainConfig, Pretrainer, pretrain
from .train import Dataset, DeviceUnavailableError, Trainer

__version__ = _C.__version__
HAS_CUDA = bool(_C.HAS_CUDA)

set_num_threads = _C.set_num_threads
get_num_threads = _C.get_num_threads

__all__ = ["Config", "Dataset", "DeviceUnavailableError", "HAS_CUDA", "Model", "PretrainConfig",
           "Pretrainer", "Trainer", "__version__", "detect", "get_num_threads", "label_distribution",
           "load", "metrics", "plots", "pretrain", "set_num_threads"]
