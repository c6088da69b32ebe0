"""Files written beside their target and renamed over it: a reader sees the old file or
the whole new one, never half of one."""
import os


def write_atomically(path, write):
    """write(tmp) fills a temporary file beside `path`, which then replaces `path`. An
    OSError names `path`, not the temporary file, and no temporary file is left behind."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise type(e)(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):  # a failed write or rename
            try:
                os.remove(tmp)
            except OSError:
                pass
    return path
