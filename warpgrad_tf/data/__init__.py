"""Data sets of the paper's experiments, read from local files (never downloaded)."""

from warpgrad_tf.data.omniglot import (
    OmniglotAlphabets,
    OmniglotDataError,
    OmniglotNotFoundError,
    OmniglotTask,
    OmniglotTasks,
    affine_transform,
    augmented_minibatches,
    find_sources,
    load_images,
    random_affine,
)

__all__ = [
    "OmniglotAlphabets",
    "OmniglotDataError",
    "OmniglotNotFoundError",
    "OmniglotTask",
    "OmniglotTasks",
    "affine_transform",
    "augmented_minibatches",
    "find_sources",
    "load_images",
    "random_affine",
]

from warpgrad_tf.data.fewshot import (  # few-shot episodes, Sec. 4.1 / App. H
    ClassSplit,
    Episode,
    FewShotDataError,
    FewShotEpisodes,
    FewShotNotFoundError,
)

__all__ += ["ClassSplit", "Episode", "FewShotDataError", "FewShotEpisodes", "FewShotNotFoundError"]
