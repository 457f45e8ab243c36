"""Whether an exported TensorFlow graph (a SavedModel) may be loaded: its operations, read without running any.

Runs in the evaluator process (``grader/evaluator/process.py``), before ``tf.saved_model.load``. A SavedModel is
untrusted input written by the student's code: besides arithmetic, a graph can hold operations that read or
write files (``ReadFile``, ``WriteFile``: say, one forging the evaluator's own answers), call back into Python
(``PyFunc``), read datasets from files, write summaries or debug dumps, or talk to other processes. The graph is
parsed from ``saved_model.pb`` as a protocol buffer (``saved_model_pb2``), nothing in it executed, and
:func:`refusal` names what it will not load; see "Graph artifacts (SavedModel)" in ``docs/security.md``.

What loading and serving run (measured on TensorFlow 2.21 with Keras 3's ``model.export``, by adding a
``WriteFile`` to every function of an exported model): ``tf.saved_model.load`` of a SavedModel with one meta graph
and an object graph runs none of its functions (it restores the variables from ``variables/`` through Python code
of its own), and ``loaded.serve(x)`` runs the function the object graph names for ``serve`` and what it calls.
The exporter's ``__inference__traced_save_*`` and ``__inference__traced_restore_*`` functions, which hold the
checkpoint operations (``SaveV2``, ``RestoreV2``, ``MergeV2Checkpoints``), are named only by the top-level
graph's saver nodes, and are never run. A SavedModel *without* an object graph is loaded the TensorFlow 1 way,
which runs the saver's restore function and the init op as it loads (the same measurement wrote the marker
of ``traced_restore``): such a model is refused.

So: the operations of :data:`DENIED` are refused wherever they appear (the top-level graph, every function of
the library, whether or not anything calls it); the checkpoint operations of :data:`CHECKPOINT` are refused in
the functions the object graph names (those a load or a call can run: ``serve``, its signatures, resource
initialisers) and in every function they reach, and allowed elsewhere.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MAX_GRAPH_BYTES = 64 * 1024 * 1024  # saved_model.pb: the graph; the weights are in variables/
MAX_NAMED = 8  # operation types named in one refusal

# The operations a graph of this exercise has no business running, by what they reach.
DENIED_BY_KIND: dict[str, frozenset[str]] = {
    "Python callbacks": frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"}),
    "files": frozenset(
        {
            "ReadFile",
            "WriteFile",
            "MatchingFiles",
            "FileSystemSetConfiguration",
            "ImmutableConst",  # memory-maps a file named by an attribute
            "InitializeTableFromTextFile",
            "InitializeTableFromTextFileV2",
            "LoadAndRemapMatrix",
            "GenerateVocabRemapping",
            "DecodeProtoV2",  # descriptor_source may name a file
            "EncodeProto",
            "CalibrationStatisticsSaver",
            "DumpTensor",
            "RecordInput",
            "WholeFileReader",
            "WholeFileReaderV2",
            "TextLineReader",
            "TextLineReaderV2",
            "TFRecordReader",
            "TFRecordReaderV2",
            "FixedLengthRecordReader",
            "FixedLengthRecordReaderV2",
            "IdentityReader",
            "IdentityReaderV2",
            "LMDBReader",
        }
    ),
    "datasets read from or written to files": frozenset(
        {
            "TFRecordDataset",
            "TFRecordDatasetV2",
            "TextLineDataset",
            "FixedLengthRecordDataset",
            "FixedLengthRecordDatasetV2",
            "CSVDataset",
            "CSVDatasetV2",
            "ExperimentalCSVDataset",
            "LMDBDataset",
            "ExperimentalLMDBDataset",
            "SqlDataset",
            "ExperimentalSqlDataset",
            "MatchingFilesDataset",
            "ExperimentalMatchingFilesDataset",
            "LoadDataset",
            "SaveDataset",
            "SaveDatasetV2",
            "SnapshotDataset",
            "SnapshotDatasetV2",
            "SnapshotDatasetReader",
            "SnapshotNestedDatasetReader",
            "SnapshotChunkDataset",
            "ListSnapshotChunksDataset",
            "DistributedSave",
            "DatasetToTFRecord",
            "ExperimentalDatasetToTFRecord",
            "CacheDataset",  # its filename caches to disk
            "CacheDatasetV2",
            "DatasetFromGraph",  # runs a graph hidden in a string tensor
        }
    ),
    "summary writers": frozenset(
        {
            "SummaryWriter",
            "CreateSummaryFileWriter",
            "CreateSummaryDbWriter",
            "WriteSummary",
            "WriteScalarSummary",
            "WriteHistogramSummary",
            "WriteImageSummary",
            "WriteAudioSummary",
            "WriteGraphSummary",
            "WriteRawProtoSummary",
            "ImportEvent",
            "FlushSummaryWriter",
            "CloseSummaryWriter",
            "StatsAggregatorSetSummaryWriter",
        }
    ),
    "debugger dumps": frozenset(
        {
            "DebugIdentity",
            "DebugIdentityV2",
            "DebugIdentityV3",
            "DebugNanCount",
            "DebugNumericSummary",
            "DebugNumericSummaryV2",
            "Copy",  # debug_ops_spec: copies with debug URLs
            "CopyHost",
        }
    ),
    "other processes and the network": frozenset(
        {
            "RpcCall",
            "RpcCheckStatus",
            "RpcClient",
            "RpcGetValue",
            "RpcServer",
            "RpcServerRegister",
            "RpcServerStart",
            "DeleteRpcFutureResource",
            "Rpc",
            "TryRpc",
            "DataServiceDataset",
            "DataServiceDatasetV2",
            "DataServiceDatasetV3",
            "DataServiceDatasetV4",
            "RegisterDataset",
            "RegisterDatasetV2",
            "RemoteCall",
            "Send",
            "Recv",
            "_Send",
            "_Recv",
            "_HostSend",
            "_HostRecv",
            "NcclAllReduce",
            "NcclBroadcast",
            "NcclReduce",
        }
    ),
    "code outside the graph": frozenset(
        {
            "XlaCallModule",  # a StableHLO module in a string, with host callbacks
            "MlirPassthroughOp",
            "XlaCustomCall",
            "XlaCustomCallV2",
            "XlaHostCompute",
            "_XlaHostComputeMlir",
            "XlaSendToHost",
            "XlaRecvFromHost",
            "XlaSend",
            "XlaRecv",
            "_XlaSendFromHost",
            "_XlaSendFromHostV2",
            "_XlaRecvAtHost",
            "_XlaRecvAtHostV2",
        }
    ),
}
# Families refused by the start of their names (their members come and go between TensorFlow versions).
DENIED_PREFIXES = ("Collective", "_Nccl", "Rpc", "Reader", "Debug", "Infeed", "Outfeed")
DENIED_PREFIX_EXCEPTIONS = frozenset({"DebugGradientIdentity", "DebugGradientRefIdentity"})  # identities for gradients
DENIED = frozenset().union(*DENIED_BY_KIND.values())

# Checkpoint I/O: in every export, in the saver's functions, which loading and serving never run.
CHECKPOINT = frozenset(
    {"Save", "SaveSlices", "SaveV2", "Restore", "RestoreSlice", "RestoreV2", "DTensorRestoreV2", "MergeV2Checkpoints"}
)
# ``Print`` writes to stderr only; ``PrintV2`` writes where its ``output_stream`` says, which may be a file.
PRINT_STREAMS = frozenset({"stderr", "stdout", "log(info)", "log(warning)", "log(error)"})


def is_denied(op: str) -> bool:
    """Whether operation type ``op`` is refused wherever it appears."""
    if op in DENIED:
        return True
    return op.startswith(DENIED_PREFIXES) and op not in DENIED_PREFIX_EXCEPTIONS


def refusal(saved_model_dir: Path) -> str:
    """"" when the SavedModel at ``saved_model_dir`` may be loaded, else a short reason (naming refused operations).

    Reads ``saved_model.pb`` (the file ``tf.saved_model.load`` reads first) and nothing else; never raises.
    """
    try:
        data = _read_bounded(Path(saved_model_dir) / "saved_model.pb")
    except FileNotFoundError:
        return "it has no saved_model.pb"
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return f"its saved_model.pb cannot be read ({type(exc).__name__})"
    try:
        from google.protobuf.message import DecodeError
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        try:
            proto.ParseFromString(data)
        except (DecodeError, RecursionError, ValueError):
            return "its saved_model.pb cannot be parsed"
        return _judge(proto)
    except Exception as exc:  # the refusal never lets an artifact through by failing
        return f"its graph could not be checked ({type(exc).__name__})"


def _read_bounded(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("its saved_model.pb is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_GRAPH_BYTES:
                raise ValueError(f"its saved_model.pb is larger than {MAX_GRAPH_BYTES // 2**20} MiB")
            chunks.append(chunk)
    finally:
        os.close(fd)
    if not chunks:
        raise ValueError("its saved_model.pb is empty")
    return b"".join(chunks)


def _judge(proto: Any) -> str:
    metas = list(proto.meta_graphs)
    if len(metas) != 1 or not metas[0].HasField("object_graph_def") or not metas[0].object_graph_def.nodes:
        # tf.saved_model.load would take the TensorFlow 1 path, which runs the saver's restore and the init op.
        return "it is not a TensorFlow 2 SavedModel (one meta graph with an object graph); its graph would run as it loads"
    meta = metas[0]
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    gradients = {g.function_name: g.gradient_func for g in meta.graph_def.library.gradient}
    denied: set[str] = set()
    for node in _all_nodes(meta.graph_def.node, library.values()):
        if is_denied(node.op):
            denied.add(node.op)
        elif node.op == "PrintV2" and not _prints_to_a_stream(node):
            denied.add("PrintV2 (to a file)")
    if denied:
        return "it holds operations the grader does not run (files, Python, other processes): " + _names(denied)
    served = _reachable(_named_by(meta.object_graph_def, library), library, gradients)
    checkpoint = {node.op for name in served for node in library[name].node_def if node.op in CHECKPOINT}
    if checkpoint:
        return "it saves or restores checkpoints where the model runs: " + _names(checkpoint)
    return ""


def _names(ops: Iterable[str]) -> str:
    ordered = sorted(ops)
    more = len(ordered) - MAX_NAMED
    return ", ".join(ordered[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")


def _all_nodes(top: Iterable[Any], functions: Iterable[Any]) -> Iterator[Any]:
    yield from top
    for function in functions:
        yield from function.node_def


def _prints_to_a_stream(node: Any) -> bool:
    if "output_stream" not in node.attr:
        return True  # the default, stderr
    value = node.attr["output_stream"]
    return value.WhichOneof("value") == "s" and value.s.decode("utf-8", "replace") in PRINT_STREAMS


def _named_by(message: Any, library: dict[str, Any]) -> set[str]:
    """The functions of ``library`` a message names anywhere in it (for the object graph: its concrete functions,
    its function and bare-function nodes, resource initialisers, saveables, captured tensors), read generically."""
    found: set[str] = set()
    todo = [message]
    while todo:
        current = todo.pop()
        for field, value in current.ListFields():
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                found.update(key for key in value if isinstance(key, str) and key in library)
                items = list(value.values())
            elif field.is_repeated:
                items = list(value)
            else:
                items = [value]
            for item in items:
                if isinstance(item, str):
                    if item in library:
                        found.add(item)
                elif hasattr(item, "ListFields"):
                    todo.append(item)
    return found


def _reachable(roots: set[str], library: dict[str, Any], gradients: dict[str, str]) -> set[str]:
    """``roots`` and every function they call, however named: a ``func`` attribute (nested in lists and in other
    functions' attributes), a node whose type is a function, a string attribute naming one, a gradient."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue  # a name outside the library is nothing of the graph's to run
        seen.add(name)
        if name in gradients:
            todo.append(gradients[name])
        function = library[name]
        for node in function.node_def:
            if node.op in library:
                todo.append(node.op)
            for value in node.attr.values():
                todo.extend(n for n in _attr_names(value) if n in library)
        for value in function.attr.values():
            todo.extend(n for n in _attr_names(value) if n in library)
    return seen


def _attr_names(value: Any, depth: int = 0) -> Iterator[str]:
    """Function names (and strings, which may be function names) an ``AttrValue`` holds."""
    if depth > 64:
        return
    kind = value.WhichOneof("value")
    if kind == "func":
        yield value.func.name
        for inner in value.func.attr.values():
            yield from _attr_names(inner, depth + 1)
    elif kind == "s":
        yield value.s.decode("utf-8", "replace")
    elif kind == "list":
        for func in value.list.func:
            yield func.name
            for inner in func.attr.values():
                yield from _attr_names(inner, depth + 1)
        for s in value.list.s:
            yield s.decode("utf-8", "replace")
