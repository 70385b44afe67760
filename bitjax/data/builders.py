"""tfds builders for local corpora, written as array_record (no TensorFlow).

Both builders produce splits 'train' and 'validation' of examples
{'text': str, 'path': str} (the data source returns them as UTF-8 bytes) in a
deterministic order (`disable_shuffling`), so the corpus, its split and every
derived cache are reproducible. Read them with `tfds.data_source`:

  builder_kwargs = dict(config=text_files_config(['notes/*.md']),
                        file_format='array_record')
  ds = tfds.data_source('text_files', split='train', data_dir=...,
                        builder_kwargs=builder_kwargs)
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from bitjax.data import text as text_lib

# Fraction of files (or of the text, see `text.split_docs`) held out.
VALIDATION_FRACTION = 0.03


class _DocsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared parts: features, deterministic order, examples from `Doc`s."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 looks this up via the `importlib_resources` backport, which
        # it does not depend on for Python >= 3.9 (ModuleNotFoundError).
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(doc="The document (UTF-8)."),
                    "path": tfds.features.Text(doc="Source file / pydoc topic."),
                }
            ),
            # Keep the sorted file order: reproducible caches and eval batches.
            disable_shuffling=True,
        )

    def _generate_examples(self, docs: Sequence[text_lib.Doc]):
        # Keys only need to be unique within a split.
        for i, (path, text) in enumerate(docs):
            yield i, {"text": text, "path": path}


class PythonStdlib(_DocsBuilder):
    """The running Python's standard library source + pydoc topics.

    The default, always-available corpus (~12 MB for CPython 3.11): every
    `*.py` under `sysconfig.get_paths()['stdlib']` except third-party packages
    and test suites, plus the `pydoc_data.topics` reference text. ~3% of the
    files, chosen by a stable hash of their relative path, form 'validation'.
    The config name is the interpreter version, so different Pythons never
    share a cache.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(
            name=text_lib.python_version_tag(), description="Standard library of this interpreter version."
        )
    ]

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        splits = text_lib.split_docs(text_lib.stdlib_docs(), VALIDATION_FRACTION)
        return {k: self._generate_examples(v) for k, v in splits.items()}


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
    """Which files to read. Build it with `text_files_config`.

    Attributes:
      files: sorted absolute paths of the files.
      validation_fraction: fraction held out as 'validation'.
      encoding: how the files are decoded (see `text.read_text`).
    """

    files: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    validation_fraction: float = VALIDATION_FRACTION
    encoding: str = text_lib.DEFAULT_ENCODING


def text_files_config(
    paths: Sequence[str] | str,
    validation_fraction: float = VALIDATION_FRACTION,
    encoding: str = text_lib.DEFAULT_ENCODING,
) -> TextFilesConfig:
    """Resolves `paths` (files / globs) into a `TextFilesConfig`.

    The config name is a fingerprint of the resolved files (paths, sizes,
    mtimes), the fraction and the encoding, so each file set -- and each edit
    of a file -- gets its own data_dir and caches.

    Raises:
      DataError: a path or glob matches nothing.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    files = tuple(text_lib.resolve_paths(paths))
    # the default encoding adds nothing, so caches built before the option existed stay valid
    extra = () if encoding == text_lib.DEFAULT_ENCODING else (encoding,)
    fp = text_lib.files_fingerprint(files, validation_fraction, *extra)
    return TextFilesConfig(
        name=f"files-{fp}",
        description=f"{len(files)} file(s) under {text_lib.common_root(files)}",
        files=files,
        validation_fraction=validation_fraction,
        encoding=encoding,
    )


class TextFiles(_DocsBuilder):
    """User text files, one document per file.

    Needs a `TextFilesConfig` (see `text_files_config`). Files are split into
    'train' / 'validation' by a stable hash of their path relative to the
    files' common directory; when that leaves a split empty (few files), the
    last ~3% of every file is held out instead.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        if not isinstance(config, TextFilesConfig) or not config.files:
            raise text_lib.DataError(
                "text_files needs a config listing the files: builder_kwargs={'config': text_files_config(paths)}."
            )
        root = text_lib.common_root(config.files)
        docs = [(os.path.relpath(f, root), text_lib.read_text(f, config.encoding)) for f in config.files]
        text_lib.check_not_empty(docs, f"text_files ({config.description})")
        splits = text_lib.split_docs([d for d in docs if d[1]], config.validation_fraction)
        if not splits["validation"]:
            raise text_lib.DataError(
                "text_files: the corpus is too small to hold out a validation "
                "split; add more text to config.data.paths."
            )
        return {k: self._generate_examples(v) for k, v in splits.items()}
