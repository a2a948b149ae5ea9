"""Drop-directory backend: .eml and .msg files in a local or network folder.

Outlook users drag mails to a folder as .msg files, and archives export
.eml. Every such file below the directory is an item. Its id is the path
relative to the directory plus a hash of its content, so it survives
restarts, and a different mail saved under the same name later is a new
item. After an item's transaction has committed, the post-action keeps the
file, moves it to a subfolder, or deletes it. A failed item is never
deleted: "delete" and "move" both put it in the failed folder.

A subdirectory made by `ensure_subfolder` is a folder of its own, for a
mapped folder. It contains a marker file, FOLDER_MARKER, and the walk of
the directory above it skips it. Its key is its path relative to the drop
directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from syncd.backends.base import (
    Batch,
    FeedbackRequest,
    Folder,
    FolderReport,
    Item,
    content_digest,
)
from syncd.errors import ConfigError, FolderNotFoundError, PermanentBackendError
from syncd.mail import Outcome

log = logging.getLogger("syncd.dropdir")

POST_ACTIONS = ("keep", "move", "delete")
SUFFIXES = {".eml": "eml", ".msg": "msg"}
PROCESSED_DIR = "processed"
FAILED_DIR = "failed"

#: File that marks a subdirectory as a folder of its own. Its name starts
#: with a dot, so it is never read as a mail.
FOLDER_MARKER = ".syncd-folder"

#: Key of the drop directory itself.
ROOT_KEY = "."


class DropDirectoryBackend:
    kind = "folder"

    def __init__(
        self,
        path: Path,
        *,
        post_action: str = "move",
        batch_size: int = 50,
        max_item_bytes: int | None = None,
    ) -> None:
        if post_action not in POST_ACTIONS:
            raise ValueError(f"invalid post-action {post_action!r}: use one of {', '.join(POST_ACTIONS)}")
        self.root = Path(path)
        self.post_action = post_action
        self.batch_size = batch_size
        self.max_item_bytes = max_item_bytes
        self.folder = Folder(key=ROOT_KEY, name=str(self.root))

    def ensure_folders(self) -> list[FolderReport]:
        if not self.root.is_dir():
            raise PermanentBackendError(
                f"drop directory {str(self.root)!r} does not exist or is not a directory: "
                "create it or enrol the mailbox again with the right --path",
                mailbox=str(self.root),
            )
        return [FolderReport(self.folder, created=False)]

    def ensure_subfolder(self, parent: Folder, name: str) -> FolderReport:
        """Find or create the subdirectory `name` of `parent` and mark it as a folder of its own."""
        if name in ("", ".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise ConfigError(
                f"invalid folder name {name!r} for a drop directory: use a name without / or \\ "
                "that does not start with a dot"
            )
        if parent.key == ROOT_KEY and name.casefold() in (PROCESSED_DIR, FAILED_DIR):
            raise ConfigError(f"invalid folder name {name!r}: syncd keeps handled files there, so choose another name")

        directory = self._directory(parent) / name
        created = not directory.is_dir()
        try:
            directory.mkdir(exist_ok=True)
            (directory / FOLDER_MARKER).touch()
        except OSError as exc:
            raise PermanentBackendError(
                f"cannot create folder {str(directory)!r}: {exc.strerror or exc}", mailbox=str(self.root)
            ) from exc
        if created:
            log.info("created folder %r in drop directory %s", name, self.root)
        key = directory.relative_to(self.root).as_posix()
        return FolderReport(Folder(key=key, name=name), created=created)

    def batches(
        self, folder: Folder, state: str | None, known: Callable[[str], bool] | None = None
    ) -> Iterator[Batch]:
        """Yield every mail file below the folder's directory; the drop directory keeps no cursor.

        Subdirectories that are folders of their own are left to their own scan.

        `known` is not used: an item id includes a hash of the content, so
        telling a known file needs the read that yielding it costs anyway.
        """
        directory = self._directory(folder)
        if not directory.is_dir():
            raise FolderNotFoundError(
                f"drop directory {str(directory)!r} no longer exists", mailbox=str(self.root)
            )
        items: list[Item] = []
        for path in self._mail_files(directory):
            items.append(self._read(folder, path))
            if len(items) >= self.batch_size:
                yield Batch(folder, items, None)
                items = []
        if items:
            yield Batch(folder, items, None)

    def apply_feedback(self, requests: list[FeedbackRequest]) -> list[FeedbackRequest]:
        applied = []
        for request in requests:
            try:
                self._post_process(request)
            except OSError as exc:
                log.warning(
                    "post-action %s on %s failed, will try again: %s",
                    self.post_action, request.item_id, exc,
                )
                continue
            applied.append(request)
        return applied

    def close(self) -> None:
        pass

    def _directory(self, folder: Folder) -> Path:
        return self.root if folder.key == ROOT_KEY else self.root / folder.key

    def _mail_files(self, top: Path) -> Iterator[Path]:
        skipped = {self.root / PROCESSED_DIR, self.root / FAILED_DIR}
        for directory, subdirectories, files in os.walk(top):
            current = Path(directory)
            # Sorted walking gives a stable order, which makes passes and
            # their logs reproducible.
            subdirectories[:] = sorted(
                name for name in subdirectories
                if current / name not in skipped
                and not name.startswith(".")
                and not (current / name / FOLDER_MARKER).exists()
            )
            for name in sorted(files):
                path = current / name
                if path.suffix.lower() in SUFFIXES and not name.startswith("."):
                    yield path

    def _read(self, folder: Folder, path: Path) -> Item:
        relative = path.relative_to(self.root).as_posix()
        file_format = SUFFIXES[path.suffix.lower()]
        try:
            size = path.stat().st_size
            if self.max_item_bytes is not None and size > self.max_item_bytes:
                # Identify the oversize file without reading it.
                item_id = f"{relative}@size-{size}"
                return Item(folder, item_id, raw=None, format=file_format, size=size)
            raw = path.read_bytes()
        except OSError as exc:
            return Item(
                folder, f"{relative}@unreadable", raw=None, format=file_format,
                error=f"cannot read {str(path)!r}: {exc.strerror or exc}",
            )
        return Item(folder, f"{relative}@{content_digest(raw)}", raw=raw, format=file_format)

    def _post_process(self, request: FeedbackRequest) -> None:
        relative, _, digest = request.item_id.rpartition("@")
        path = self.root / relative
        if not path.exists() or self.post_action == "keep":
            return
        if len(digest) == 16 and content_digest(path.read_bytes()) != digest:
            # Another mail was saved under the same name since; it is a new
            # item of its own and must stay for the next pass.
            return
        if request.outcome is Outcome.FAILED:
            self._move(path, self.root / FAILED_DIR / relative)
        elif self.post_action == "move":
            self._move(path, self.root / PROCESSED_DIR / relative)
        else:
            path.unlink()

    @staticmethod
    def _move(path: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        candidate = target
        counter = 1
        while candidate.exists():
            candidate = target.with_name(f"{target.stem}-{counter}{target.suffix}")
            counter += 1
        path.rename(candidate)
