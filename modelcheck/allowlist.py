"""What an uploaded model may call: the allow-lists every check reads, in one place.

Everything not listed here is refused. The lists are broad enough for ordinary models
(MLPs, CNNs and ResNets with batch norm and pooling, transformer encoders, embeddings,
LSTMs and GRUs, normalisations, upsampling) and exclude anything that touches files,
the network, the process, threads or raw memory. :data:`REFUSED` names the operators
that are refused on purpose, with the reason error messages give.

How to extend
-------------
A user's model is refused with a message naming the operator (``torch.foo``,
``aten.foo.default``, ONNX ``Foo``) and where it is called. Before adding it:

1. Read what the operator does (``torch._C._jit_get_schemas_for_operator("aten::foo")``
   shows its schemas): it must compute on the tensors it is given, and never read or
   write files, sockets or other processes, start threads, sleep, or build a tensor
   over memory it did not allocate (``set_``, ``as_strided``, ``from_file``, raw
   nested or sparse buffers, uninitialised ``empty``).
2. Add its name to the matching group below, without namespace or overload: TorchScript
   code (``torch.foo``) and torch.export graphs (``torch.ops.aten.foo.default``) share
   :data:`ATEN_OPS`; an in-place variant ``foo_`` is allowed with ``foo``. ONNX ops go
   in :data:`ONNX_OPS`.
3. Add a test model that calls it to ``tests/unit/test_modelcheck.py``: every allowed
   name is exercised by a parametrised test, so a typo shows up there.

Never allow a name listed in :data:`REFUSED`; remove it from there first, with a reason
in the commit message.
"""

from __future__ import annotations

__all__ = [
    "ATEN_OPS",
    "HIGHER_ORDER_OPS",
    "MATH_FUNCTIONS",
    "ONNX_OPS",
    "OPERATOR_BUILTINS",
    "PICKLE_GLOBALS",
    "PRIM_OPS",
    "REFUSED",
    "REFUSED_PREFIXES",
    "SYMPY_NAMES",
    "SYM_FUNCTIONS",
    "TENSOR_METHODS",
    "TORCHSCRIPT_BUILTINS",
    "TORCHSCRIPT_REFUSED_BUILTINS",
    "TORCHSCRIPT_TYPES",
    "is_allowed_aten",
    "refusal_reason",
]


def _names(text: str) -> frozenset[str]:
    # Whitespace-separated names: one group per line keeps a list of hundreds readable.
    return frozenset(text.split())


#: aten operators, by the name TorchScript writes after ``torch.`` and torch.export
#: writes between ``torch.ops.aten.`` and the overload.
ATEN_OPS: frozenset[str] = _names(
    # elementwise arithmetic and maths
    """
    abs absolute acos acosh add addcdiv addcmul asin asinh atan atan2 atanh
    bitwise_and bitwise_not bitwise_or bitwise_xor bitwise_left_shift bitwise_right_shift
    ceil clamp clamp_max clamp_min clip copysign cos cosh deg2rad digamma div divide
    erf erfc erfinv exp exp2 expm1 fix float_power floor floor_divide fmax fmin fmod
    frac heaviside hypot lerp lgamma log log10 log1p log2 logaddexp logaddexp2 logit
    maximum minimum mul multiply nan_to_num neg negative pow rad2deg reciprocal
    remainder round rsqrt rsub sgn sigmoid sign signbit sin sinc sinh sqrt square sub
    subtract tan tanh true_divide trunc xlogy
    """
    # comparison, logic, selection
    """
    eq ne lt le gt ge greater greater_equal less less_equal equal not_equal
    logical_and logical_not logical_or logical_xor isnan isinf isfinite isclose
    allclose where masked_fill masked_select masked_scatter
    """
    # reductions, sorting, scans
    """
    sum mean prod max min amax amin aminmax argmax argmin all any std var std_mean
    var_mean norm linalg_vector_norm linalg_matrix_norm linalg_norm frobenius_norm
    logsumexp cumsum cumprod cummax cummin logcumsumexp median nanmedian mode sort
    argsort topk kthvalue count_nonzero nansum nanmean
    """
    # linear algebra
    """
    matmul mm bmm addmm addmv addbmm baddbmm mv dot vdot outer ger inner einsum
    tensordot linear bilinear cross linalg_cross cdist _cdist_forward pdist
    cosine_similarity pairwise_distance dist kron tril triu diag diagonal diag_embed
    trace t
    """
    # shapes, views, indexing, concatenation
    """
    view view_as reshape reshape_as _unsafe_view _reshape_alias flatten unflatten
    squeeze unsqueeze permute transpose swapaxes swapdims movedim moveaxis expand
    expand_as broadcast_to broadcast_tensors repeat repeat_interleave tile contiguous
    clone detach alias lift_fresh_copy copy cat concat concatenate stack hstack vstack
    dstack split split_with_sizes unsafe_split chunk unsafe_chunk unbind tensor_split
    narrow select slice index_select gather scatter scatter_add scatter_reduce index
    index_put index_add index_copy index_fill take take_along_dim flip roll rot90
    unfold im2col col2im pad constant_pad_nd reflection_pad1d reflection_pad2d
    reflection_pad3d replication_pad1d replication_pad2d replication_pad3d
    pixel_shuffle pixel_unshuffle channel_shuffle nonzero unique_consecutive _unique2
    unique_dim bincount histc bucketize searchsorted one_hot
    """
    # creating tensors (initialised) and random numbers
    """
    zeros zeros_like ones ones_like full full_like arange linspace logspace eye tensor
    scalar_tensor as_tensor new_zeros new_ones new_full fill zero rand
    rand_like randn randn_like randint randint_like randperm bernoulli multinomial
    normal uniform
    """
    # types, devices, sizes, scalars
    """
    to _to_copy type_as size sym_size stride sym_stride numel sym_numel
    sym_storage_offset dim item _local_scalar_dense is_floating_point is_complex
    result_type can_cast promote_types element_size Int Float Bool Complex
    ScalarImplicit IntImplicit FloatImplicit ComplexImplicit device
    _assert_scalar _assert_tensor_metadata _assert_async sym_constrain_range
    sym_constrain_range_for_size _functional_sym_constrain_range
    _functional_sym_constrain_range_for_size
    """
    # activations
    """
    relu relu6 leaky_relu prelu _prelu_kernel rrelu elu selu celu gelu silu mish
    hardswish hardsigmoid hardtanh hardshrink softshrink threshold softplus
    glu log_sigmoid log_sigmoid_forward softmax log_softmax
    _softmax _log_softmax _masked_softmax
    """
    # dropout
    """
    dropout feature_dropout alpha_dropout feature_alpha_dropout native_dropout
    """
    # convolution, normalisation, pooling, upsampling, embeddings
    """
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
    convolution _convolution _convolution_mode batch_norm _batch_norm_impl_index
    native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
    _native_batch_norm_legit_functional instance_norm group_norm native_group_norm
    layer_norm native_layer_norm rms_norm _fused_rms_norm embedding embedding_bag
    _embedding_bag embedding_renorm
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
    max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
    adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d max_unpool2d
    max_unpool3d upsample_nearest1d upsample_nearest2d upsample_nearest3d
    upsample_linear1d upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d
    _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d
    _upsample_bilinear2d_aa _upsample_bicubic2d_aa _upsample_lanczos2d_aa grid_sampler
    grid_sampler_2d affine_grid_generator
    """
    # attention and recurrent layers (their fused kernels too)
    """
    scaled_dot_product_attention _scaled_dot_product_attention_math
    _scaled_dot_product_flash_attention_for_cpu _native_multi_head_attention
    _transformer_encoder_layer_fwd lstm gru rnn_tanh rnn_relu lstm_cell gru_cell
    rnn_tanh_cell rnn_relu_cell _pack_padded_sequence _pad_packed_sequence
    """
    # nested tensors built from a padded tensor and a mask (nn.TransformerEncoder's
    # fast path calls them); the raw-buffer constructors stay refused (REFUSED_PREFIXES)
    """
    _nested_tensor_from_mask _nested_tensor_from_mask_left_aligned to_padded_tensor
    """
    # losses (some embedding models carry their training loss)
    """
    mse_loss l1_loss smooth_l1_loss huber_loss cross_entropy_loss nll_loss nll_loss_nd
    nll_loss2d binary_cross_entropy binary_cross_entropy_with_logits kl_div
    cosine_embedding_loss margin_ranking_loss triplet_margin_loss
    """
    # TorchScript language builtins (lists, dicts, strings, control flow), which
    # TorchScript writes as torch.<name>
    """
    __and__ __or__ __xor__ __lshift__ __rshift__ __not__ __is__ __isnot__ __contains__
    __getitem__ __derive_index __range_length __round_to_zero_floordiv __interpolate
    __upsample __upsample_bilinear _set_item Delete append extend insert pop remove
    clear reverse len list dict keys values items get setdefault update format warn
    floordiv divmod str join startswith endswith lower upper strip lstrip rstrip
    replace find count splitlines isdigit isalpha isspace isupper islower ord chr hex
    oct bin _unwrap_optional is_autocast_enabled is_grad_enabled set_grad_enabled
    is_scripting sorted
    """
)

#: ``ops.prim.<name>`` in TorchScript code: type queries and language plumbing.
PRIM_OPS: frozenset[str] = _names(
    """
    dtype device type layout requires_grad is_nested is_cuda is_cpu is_xpu is_mps
    is_meta is_sparse is_sparse_csr is_mkldnn is_quantized is_vulkan is_ipu is_maia
    is_xla is_mtia data grad itemsize nbytes RaiseException NumToTensor max min
    abs unchecked_unwrap_optional unchecked_cast Uninitialized tolist rangelist
    EnumName EnumValue StringIndex TupleIndex
    """
)

#: Bare names TorchScript code may use as values or call.
TORCHSCRIPT_BUILTINS: frozenset[str] = _names(
    """
    annotate unchecked_cast uninitialized isinstance getattr hasattr len int float
    bool complex str range enumerate zip list tuple dict min max abs all any sum sorted
    round divmod pow hash ord chr hex oct bin _to_tensor rangelist inf nan infj nanj
    AssertionError
    """
)

#: Type names TorchScript code writes in annotations, ``annotate`` and ``isinstance``.
TORCHSCRIPT_TYPES: frozenset[str] = _names(
    """
    Tensor Optional List Tuple Dict Union Any NoneType Final Module ModuleInterface
    NamedTuple Enum Device Stream Layout ScalarType MemoryFormat Generator number
    Scalar int float bool complex str
    """
)

#: Bare TorchScript builtins refused wherever they appear, even as a local's value
#: (``f = fork`` would otherwise smuggle them past a check of calls).
TORCHSCRIPT_REFUSED_BUILTINS: frozenset[str] = _names(
    "fork awaitable print rpc_async rpc_sync rpc_remote"
)

#: Method names allowed on values of unknown type (``x.relu()``): TorchScript writes
#: tensor methods as ``torch.<op>(x)``, so these appear only in hand-written code.
TENSOR_METHODS: frozenset[str] = ATEN_OPS | _names(
    """
    float double half bfloat16 int long short bool byte char cpu contiguous tolist
    """
)

#: ``torch.ops.higher_order.<name>`` in torch.export graphs: control flow whose
#: branches are subgraphs of the same program (checked node by node).
HIGHER_ORDER_OPS: frozenset[str] = _names(
    "cond while_loop map_impl scan wrap_with_set_grad_enabled wrap_with_autocast"
)

#: ``_operator.<name>`` targets in torch.export graphs (symbolic-shape arithmetic).
#: ``call``, ``attrgetter`` and ``methodcaller`` are absent on purpose: they call or
#: fetch anything.
OPERATOR_BUILTINS: frozenset[str] = _names(
    """
    getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_
    or_ xor not_ invert lshift rshift
    """
)

#: ``torch.<name>`` symbolic-shape helpers in torch.export graphs.
SYM_FUNCTIONS: frozenset[str] = _names(
    "sym_max sym_min sym_not sym_float sym_int sym_ite sym_sqrt sym_sum _sym_sqrt"
)

#: ``math.<name>`` targets in torch.export graphs.
MATH_FUNCTIONS: frozenset[str] = _names(
    "ceil floor trunc sqrt exp log log2 log10 pow fabs isnan isinf isfinite"
)

#: Names a torch.export symbolic expression (``expr_str``, read by ``sympy.sympify``,
#: which evaluates it as Python) may use: sympy's and torch's shape functions.
SYMPY_NAMES: frozenset[str] = _names(
    """
    Symbol Integer Float Rational Add Mul Pow Mod Max Min Abs floor ceiling Piecewise
    ExprCondPair Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan LessThan
    StrictGreaterThan GreaterThan And Or Not true false oo zoo nan IntInfinity
    NegativeIntInfinity Half One Zero NegativeOne
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv
    LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv
    IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal
    ToFloat Identity
    """
)

#: Pickle globals allowed in TorchScript and torch.save pickles, as ``module.name``.
#: Classes of the archive's own code (``__torch__.*``) are allowed besides.
PICKLE_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.device",
        "torch.jit._pickle.restore_type_tag",
        "torch.jit._pickle.build_intlist",
        "torch.jit._pickle.build_tensorlist",
        "torch.jit._pickle.build_doublelist",
        "torch.jit._pickle.build_boollist",
    }
    | {
        f"torch.{dtype}Storage"
        for dtype in _names(
            "Float Double Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble"
        )
    }
)

#: ONNX operators of the default domain (``""`` / ``"ai.onnx"``).
ONNX_OPS: frozenset[str] = _names(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention
    AveragePool BatchNormalization Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr
    BitwiseXor BlackmanWindow Cast CastLike Ceil Celu CenterCropPad Clip Col2Im
    Compress Concat ConcatFromSequence Constant ConstantOfShape Conv ConvInteger
    ConvTranspose Cos Cosh CumSum DFT DeformConv DepthToSpace DequantizeLinear Det Div
    Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HammingWindow
    HannWindow HardSigmoid HardSwish Hardmax Identity If InstanceNormalization IsInf
    IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
    LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean
    MeanVarianceNormalization MelWeightMatrix Min Mish Mod Mul Multinomial Neg
    NegativeLogLikelihoodLoss NonMaxSuppression NonZero Not OneHot Optional
    OptionalGetElement OptionalHasElement Or PRelu Pad Pow QLinearConv QLinearMatMul
    QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape
    Resize ReverseSequence RoiAlign RotaryEmbedding Round STFT Scan Scatter
    ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap Shape Shrink Sigmoid Sign
    Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus Softsign SpaceToDepth
    Split SplitToSequence Sqrt Squeeze Sub Sum Swish Tan Tanh ThresholdedRelu Tile
    TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor
    """
)

_FILES = "reads or writes files"
_THREAD = "runs code on another thread, out of sight of any check of the graph"
_MEMORY = "builds a tensor over memory it did not allocate (out-of-bounds reads and writes)"
_NETWORK = "calls other machines over the network"

#: Names refused on purpose, with the reason error messages give. Checked before every
#: allow-list, in every spelling (``torch.X``, ``ops.aten.X``, ``x.X()``, ONNX ``X``).
REFUSED: dict[str, str] = {
    "from_file": "reads files",
    "save": "writes files",
    "load": "reads files",
    "_save_for_mobile": "writes files",
    "_load_for_mobile": "reads files",
    "_save_parameters": _FILES,
    "_load_parameters": _FILES,
    "fork": _THREAD,
    "wait": "waits on code forked to another thread",
    "awaitable": _THREAD,
    "awaitable_wait": _THREAD,
    "awaitable_nowait": _THREAD,
    "Future": "holds the result of code forked to another thread",
    "Await": "holds the result of deferred code",
    "rpc_async": _NETWORK,
    "rpc_sync": _NETWORK,
    "rpc_remote": _NETWORK,
    "RRef": _NETWORK,
    "print": "writes to the worker's output",
    "_print": "writes to the worker's output",
    "Print": "writes to the worker's output",
    "sleep": "stalls the worker",
    "_sleep": "stalls the worker",
    "set_": _MEMORY,
    "as_strided": _MEMORY,
    "as_strided_": _MEMORY,
    "as_strided_copy": _MEMORY,
    "as_strided_scatter": _MEMORY,
    "data_ptr": "exposes raw memory addresses",
    "storage": "exposes the raw storage behind a tensor",
    "untyped_storage": "exposes the raw storage behind a tensor",
    "_storage": "exposes the raw storage behind a tensor",
    "share_memory_": "creates shared-memory files",
    "_share_filename_": "creates shared-memory files",
    "_share_fd_": "creates shared-memory files",
    "_new_shared_filename_cpu": "creates shared-memory files",
    "_new_shared_fd_cpu": "creates shared-memory files",
    "empty": "returns uninitialised memory, which may hold other data of the worker",
    "empty_like": "returns uninitialised memory, which may hold other data of the worker",
    "empty_strided": "returns uninitialised memory, which may hold other data of the worker",
    "new_empty": "returns uninitialised memory, which may hold other data of the worker",
    "new_empty_strided": "returns uninitialised memory, which may hold other data of the worker",
    "empty_permuted": "returns uninitialised memory, which may hold other data of the worker",
    "sparse_coo_tensor": "builds a sparse tensor whose indices are not checked",
    "_sparse_coo_tensor_unsafe": "builds a sparse tensor whose indices are not checked",
    "_sparse_csr_tensor_unsafe": "builds a sparse tensor whose indices are not checked",
    "_sparse_compressed_tensor_unsafe": "builds a sparse tensor whose indices are not checked",
    "classes": "uses a custom C++ class from a native library",
    "__setstate__": "runs when the archive is loaded, before any check",
    "__getstate__": "pairs with __setstate__, which runs at load",
    "load_library": "loads a native library",
    "ImageDecoder": "parses image files with a native decoder",
}

#: Name prefixes refused with a reason (checked after :data:`REFUSED`, before the
#: allow-lists; an allow-listed name with the prefix stays allowed).
REFUSED_PREFIXES: dict[str, str] = {
    "_nested_view_from": _MEMORY,
    "_nested_from": _MEMORY,
    "_sparse_": "builds a sparse tensor whose indices are not checked",
    "_new_shared": "creates shared-memory files",
    "_unsafe_index": "indexes memory without bounds checks",
    "_unsafe_masked_index": "indexes memory without bounds checks",
}


def refusal_reason(name: str) -> str | None:
    """The reason ``name`` is refused on purpose, or None when it is merely unlisted.

    Parameters
    ----------
    name : str
        An operator or builtin name without namespace (``"from_file"``).

    Returns
    -------
    str or None
    """
    if name in REFUSED:
        return REFUSED[name]
    for prefix, reason in REFUSED_PREFIXES.items():
        if name.startswith(prefix):
            return reason
    return None


def is_allowed_aten(name: str) -> bool:
    """Whether the aten operator ``name`` (no namespace, no overload) may be called.

    In-place variants (``relu_``) are allowed with their operator; a name in
    :data:`REFUSED` never is (``set_`` is not an in-place ``set``).

    Parameters
    ----------
    name : str

    Returns
    -------
    bool
    """
    if name in REFUSED:
        return False
    if name in ATEN_OPS:
        return True
    if refusal_reason(name) is not None:
        return False
    return name.endswith("_") and not name.endswith("__") and name[:-1] in ATEN_OPS
