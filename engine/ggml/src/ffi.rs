//! The one module of this crate that calls into ggml: every `unsafe` block of
//! the crate is here, each with its safety note. Everything else builds
//! graphs through the safe owned types below.
//!
//! Ownership, as ggml has it and as these types enforce it:
//! - [`Backend`] owns a `ggml_backend_t` (freed on drop).
//! - [`Context`] owns a `ggml_context` created with `no_alloc` (tensor and
//!   graph metadata only) and, once allocated, the backend memory of its
//!   tensors: either one buffer for all of them ([`Context::allocate`], for
//!   weights and LoRA factors) or one graph allocator for one graph
//!   ([`Context::allocate_graph`]). That memory is freed with the context, so
//!   no tensor can outlive it.
//! - [`Tensor`] is a copyable handle borrowed from its context (`'a`); a graph
//!   may use tensors of other contexts that outlive it (weights in a graph).
//! - [`Graph`] is a graph in its context's metadata.
//!
//! ggml checks shapes with `GGML_ASSERT`, which aborts the process. Each op
//! wrapper here checks what ggml asserts first and returns
//! [`GgmlError::Shape`]; each tensor creation checks the context has room
//! ([`GgmlError::ContextFull`]).

use crate::error::GgmlError;
use llama_cpp_sys_2 as sys;
use std::cell::OnceCell;
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// Device kinds a backend can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// ggml's CPU backend (always compiled in).
    Cpu,
    /// NVIDIA GPUs (feature `cuda`).
    Cuda,
    /// Apple GPUs (feature `metal`).
    Metal,
    /// Vulkan GPUs (feature `vulkan`).
    Vulkan,
}

impl Device {
    /// Every kind, in the order `auto` would prefer them after the GPU ones.
    pub const ALL: [Device; 4] = [Device::Cuda, Device::Metal, Device::Vulkan, Device::Cpu];

    /// The name used in configs (`cpu`, `cuda`, `metal`, `vulkan`).
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Metal => "metal",
            Device::Vulkan => "vulkan",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Device> {
        Device::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The backend registry's name for this kind (`ggml_backend_reg_name`).
    fn registry_name(self) -> &'static str {
        match self {
            Device::Cpu => "CPU",
            Device::Cuda => "CUDA",
            Device::Metal => "Metal",
            Device::Vulkan => "Vulkan",
        }
    }

    /// Whether this build links the backend.
    pub fn compiled(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Cuda => cfg!(feature = "cuda"),
            Device::Metal => cfg!(feature = "metal"),
            Device::Vulkan => cfg!(feature = "vulkan"),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A C string from ggml, or `?` for null.
fn c_str(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return "?".into();
    }
    // SAFETY: ggml returns pointers to static or object-owned NUL-terminated
    // strings (type, op, backend, registry and tensor names); `p` is not null
    // and is read at once, before any call that could free its owner.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The devices ggml's registry knows, as `registry/device` names.
fn registered_devices() -> Vec<(String, sys::ggml_backend_dev_t)> {
    // SAFETY: the registry functions take no pointers from us; indices stay
    // below the count ggml returns; registry and device handles are static
    // for the life of the process.
    unsafe {
        (0..sys::ggml_backend_dev_count())
            .map(|i| {
                let dev = sys::ggml_backend_dev_get(i);
                let reg = sys::ggml_backend_dev_backend_reg(dev);
                (c_str(sys::ggml_backend_reg_name(reg)), dev)
            })
            .collect()
    }
}

/// A started backend on one device.
pub struct Backend {
    ptr: NonNull<sys::ggml_backend>,
    device: Device,
    name: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish()
    }
}

impl Backend {
    /// Starts the first device of kind `device`. `n_threads` applies to the
    /// CPU backend (ignored elsewhere).
    pub fn new(device: Device, n_threads: usize) -> Result<Backend, GgmlError> {
        if !device.compiled() {
            return Err(GgmlError::NotCompiled {
                device,
                feature: device.name(),
            });
        }
        let raw = if device == Device::Cpu {
            // SAFETY: no arguments; returns null on failure, checked below.
            unsafe { sys::ggml_backend_cpu_init() }
        } else {
            let devices = registered_devices();
            let dev = devices
                .iter()
                .find(|(reg, _)| reg.as_str() == device.registry_name())
                .map(|(_, d)| *d);
            let Some(dev) = dev else {
                return Err(GgmlError::DeviceAbsent {
                    device,
                    found: devices
                        .iter()
                        .map(|(r, _)| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            // SAFETY: `dev` came from the registry above; null params ask for
            // the defaults; returns null on failure, checked below.
            unsafe { sys::ggml_backend_dev_init(dev, std::ptr::null()) }
        };
        let ptr = NonNull::new(raw).ok_or(GgmlError::InitFailed { device })?;
        if device == Device::Cpu {
            // SAFETY: `ptr` is a live CPU backend (created just above).
            unsafe { sys::ggml_backend_cpu_set_n_threads(ptr.as_ptr(), n_threads.max(1) as i32) };
        }
        // SAFETY: `ptr` is a live backend.
        let name = c_str(unsafe { sys::ggml_backend_name(ptr.as_ptr()) });
        Ok(Backend { ptr, device, name })
    }

    /// The device kind.
    pub fn device(&self) -> Device {
        self.device
    }

    /// ggml's name of the backend (`CPU`, `CUDA0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this backend can run `node` (its op on its operands' types).
    pub fn supports(&self, node: Tensor<'_>) -> bool {
        // SAFETY: both pointers are live (`self` owns the backend, `node` is
        // borrowed from its context); the call only reads them.
        unsafe { sys::ggml_backend_supports_op(self.ptr.as_ptr(), node.ptr.as_ptr()) }
    }

    /// (free, total) bytes of the device's memory, as ggml reports them.
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: the backend is live; its device handle is static; the two
        // out-pointers point to locals.
        unsafe {
            let dev = sys::ggml_backend_get_device(self.ptr.as_ptr());
            if !dev.is_null() {
                sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
            }
        }
        (free, total)
    }

    fn buffer_type(&self) -> sys::ggml_backend_buffer_type_t {
        // SAFETY: the backend is live; the buffer type is owned by ggml for
        // the life of the process.
        unsafe { sys::ggml_backend_get_default_buffer_type(self.ptr.as_ptr()) }
    }

    /// Checks every node of `graph` with `ggml_backend_supports_op`, then
    /// runs it. The graph's context must have been allocated on this backend.
    pub fn compute(&self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        let placed = graph.ctx.placed_on.get().copied();
        if placed != Some(self.buffer_type() as usize) {
            return Err(GgmlError::Data {
                name: "graph".into(),
                detail: format!(
                    "not allocated on backend {} (call Context::allocate_graph first)",
                    self.name
                ),
            });
        }
        self.check(graph)?;
        // SAFETY: both are live; every tensor of the graph has memory on
        // this backend's buffer type (checked above: the graph allocator of
        // its context, weights allocated through `Context::allocate`).
        let status = unsafe { sys::ggml_backend_graph_compute(self.ptr.as_ptr(), graph.ptr) };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(GgmlError::Compute {
                backend: self.name.clone(),
                status: status as i32,
            });
        }
        Ok(())
    }

    /// The first node of `graph` this backend cannot run, as an error: an
    /// op it does not support, or an operand without memory or in memory
    /// this backend cannot read (weights uploaded to another device).
    pub fn check(&self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        for node in graph.nodes() {
            let n_src = node.raw().src.len();
            for t in std::iter::once(node).chain((0..n_src).filter_map(|i| node.src(i))) {
                let buf = t.buffer();
                // SAFETY: `buf` is a live buffer (a tensor's memory lives as
                // long as its context); the backend is live. Both calls only
                // read them.
                let readable = !buf.is_null()
                    && unsafe {
                        sys::ggml_backend_supports_buft(
                            self.ptr.as_ptr(),
                            sys::ggml_backend_buffer_get_type(buf),
                        )
                    };
                if !readable || !t.has_memory() {
                    return Err(GgmlError::Data {
                        name: t.name(),
                        detail: format!(
                            "has no memory that backend {} can use (node `{}`)",
                            self.name,
                            node.name()
                        ),
                    });
                }
            }
            if !self.supports(node) {
                let n_src = node.raw().src.len();
                let srcs: Vec<String> = (0..n_src)
                    .filter_map(|i| node.src(i))
                    .map(|t| t.type_name())
                    .collect();
                let ty = format!("{} -> {}", srcs.join(", "), node.type_name());
                return Err(GgmlError::Unsupported {
                    op: node.op_desc(),
                    ty,
                    backend: self.name.clone(),
                    node: node.name(),
                });
            }
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: owned, freed once. Buffers allocated through it belong to
        // its buffer type, which ggml keeps for the life of the process.
        unsafe { sys::ggml_backend_free(self.ptr.as_ptr()) }
    }
}

/// Backend memory owned by a context.
enum Memory {
    Buffer(NonNull<sys::ggml_backend_buffer>),
    Graph(NonNull<sys::ggml_gallocr>),
    /// Metadata only, for planning ([`Context::plan_only`]): no memory.
    PlanOnly,
    /// A graph's intermediates in a [`Workspace`]'s buffer, borrowed while
    /// an [`InWorkspace`] guard lives (not owned: nothing to free).
    Workspace,
}

/// A ggml context holding tensor and graph metadata (never tensor data: its
/// tensors get memory on a backend through [`Context::allocate`] or
/// [`Context::allocate_graph`], owned by the context from then on).
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
    mem_size: usize,
    graph_size: usize,
    memory: OnceCell<Memory>,
    /// Tensors of other contexts its ops may read, at most.
    max_outside: usize,
    /// Those read so far (addresses).
    outside: std::cell::RefCell<std::collections::HashSet<usize>>,
    /// Whether the context's one graph was made (its metadata then counts
    /// in `used`).
    graph_made: std::cell::Cell<bool>,
    /// The buffer type the memory came from (its address).
    placed_on: OnceCell<usize>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("mem_size", &self.mem_size)
            .field("graph_size", &self.graph_size)
            .finish()
    }
}

/// The ggml types the graphs use besides the weights' own.
pub mod types {
    use super::sys;
    /// ggml type id of f32.
    pub const F32: u32 = sys::GGML_TYPE_F32;
    /// ggml type id of i32.
    pub const I32: u32 = sys::GGML_TYPE_I32;
}

/// The name of a ggml type id.
pub fn type_name(ty: u32) -> String {
    if ty >= sys::GGML_TYPE_COUNT {
        return format!("type {ty}");
    }
    // SAFETY: ggml_type_name indexes a static table of GGML_TYPE_COUNT
    // entries; `ty` is below it (checked above).
    c_str(unsafe { sys::ggml_type_name(ty) })
}

/// Bytes of one row of `n` values of type `ty`, if `n` is whole blocks of a
/// type ggml knows.
pub fn row_size(ty: u32, n: usize) -> Option<usize> {
    if ty >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `ty` is in range; both functions only read ggml's static
    // type table. A type whose traits have a zero block size is one ggml
    // removed (its slot remains); it is refused.
    unsafe {
        let blck = sys::ggml_blck_size(ty);
        if blck <= 0 || sys::ggml_type_size(ty) == 0 || n as i64 % blck != 0 {
            return None;
        }
        Some(sys::ggml_row_size(ty, n as i64))
    }
}

/// Block size, bytes per block and whether ggml counts it as quantized, for
/// a ggml type id (`None` for an id ggml does not know or has removed).
pub fn type_traits(ty: u32) -> Option<TypeTraits> {
    if ty >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `ty` is in range; the three functions read ggml's static type
    // table.
    let (blck, size, quantized) = unsafe {
        (
            sys::ggml_blck_size(ty),
            sys::ggml_type_size(ty),
            sys::ggml_is_quantized(ty),
        )
    };
    (blck > 0 && size > 0).then_some(TypeTraits {
        blck_size: blck,
        type_size: size,
        quantized,
    })
}

/// What [`type_traits`] reports of one ggml type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeTraits {
    /// Values per block (1 for plain types).
    pub blck_size: i64,
    /// Bytes per block.
    pub type_size: usize,
    /// `ggml_is_quantized`.
    pub quantized: bool,
}

/// ggml's name of op id `op` (`MUL_MAT`, `UNARY`, ...).
pub fn op_name(op: u32) -> String {
    if op >= sys::GGML_OP_COUNT {
        return format!("op {op}");
    }
    // SAFETY: `op` is below GGML_OP_COUNT, the size of ggml's static name table.
    c_str(unsafe { sys::ggml_op_name(op) })
}

/// The zero-size dummy buffer [`Context::plan_only`] hangs its tensors on:
/// one for the process (ggml makes it without memory; it is never freed,
/// like ggml's own static buffer types).
fn plan_only_buffer() -> Result<*mut sys::ggml_backend_buffer, GgmlError> {
    static BUFFER: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: the CPU buffer type is static; a size-0 request returns a
    // dummy buffer without memory (ggml/src/ggml-backend.cpp,
    // ggml_backend_buft_alloc_buffer), or null, checked below.
    let p = *BUFFER.get_or_init(|| unsafe {
        sys::ggml_backend_buft_alloc_buffer(sys::ggml_backend_cpu_buffer_type(), 0) as usize
    });
    if p == 0 {
        return Err(GgmlError::OutOfMemory {
            backend: "CPU".into(),
            what: "the planning placeholder buffer".into(),
            bytes: 0,
        });
    }
    Ok(p as *mut sys::ggml_backend_buffer)
}

/// `values` (`[n_rows, n_per_row]`, row-major) encoded in ggml type `ty`
/// with ggml's own quantizer (for test models and synthetic weights).
pub fn quantize(ty: u32, values: &[f32], n_per_row: usize) -> Result<Vec<u8>, GgmlError> {
    let err = |why: String| GgmlError::TensorType {
        name: "quantize".into(),
        ty: type_name(ty),
        why,
    };
    let row = row_size(ty, n_per_row)
        .ok_or_else(|| err(format!("rows of {n_per_row} values are not whole blocks")))?;
    if n_per_row == 0 || !values.len().is_multiple_of(n_per_row) {
        return Err(err(format!(
            "{} values are not whole rows of {n_per_row}",
            values.len()
        )));
    }
    // SAFETY: `ty` is in range (row_size checked it).
    if unsafe { sys::ggml_quantize_requires_imatrix(ty) } {
        return Err(err("needs an importance matrix".into()));
    }
    let n_rows = values.len() / n_per_row;
    let mut out = vec![0u8; n_rows * row];
    // SAFETY: `values` holds n_rows * n_per_row f32; `out` holds n_rows
    // rows of `row` bytes, the size ggml writes for this type and row length;
    // no importance matrix (checked not required).
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty,
            values.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            n_rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    if written != out.len() {
        return Err(err(format!("ggml wrote {written} of {} bytes", out.len())));
    }
    Ok(out)
}

/// Ops of one operand that are a plain call of the ggml function of the
/// same name, checked like every other node.
macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident => $ffi:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
            // SAFETY (closure): as for `scale`.
            self.unary(a, stringify!($name), |c, t| unsafe { sys::$ffi(c, t) })
        }
    )*};
}

impl Context {
    /// A metadata-only context for up to `max_tensors` tensors created in it
    /// and one graph (with room for gradients) over them that may also read
    /// up to `max_outside` tensors of other contexts (weights, adapters).
    /// Going past either bound is a [`GgmlError::ContextFull`].
    pub fn new(max_tensors: usize, max_outside: usize) -> Result<Context, GgmlError> {
        let graph_size = max_tensors + max_outside;
        // SAFETY: size queries without arguments of ours.
        let mem_size = unsafe {
            max_tensors * sys::ggml_tensor_overhead()
                + sys::ggml_graph_overhead_custom(graph_size.max(1), true)
        };
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: ggml allocates `mem_size` bytes itself (mem_buffer null);
        // returns null on failure, checked below.
        let ptr = NonNull::new(unsafe { sys::ggml_init(params) }).ok_or_else(|| {
            GgmlError::ContextFull {
                detail: format!("cannot allocate {mem_size} bytes of metadata"),
            }
        })?;
        Ok(Context {
            ptr,
            mem_size,
            graph_size: graph_size.max(1),
            max_outside,
            outside: std::cell::RefCell::new(std::collections::HashSet::new()),
            memory: OnceCell::new(),
            graph_made: std::cell::Cell::new(false),
            placed_on: OnceCell::new(),
        })
    }

    fn used(&self) -> usize {
        // SAFETY: the context is live.
        unsafe { sys::ggml_used_mem(self.ptr.as_ptr()) }
    }

    /// Fails unless `n` more tensors (plus one graph) fit.
    fn room(&self, n: usize) -> Result<(), GgmlError> {
        // SAFETY: size queries.
        let need = unsafe {
            n * sys::ggml_tensor_overhead()
                + if self.graph_made.get() {
                    0
                } else {
                    sys::ggml_graph_overhead_custom(self.graph_size, true)
                }
        };
        if self.used() + need > self.mem_size {
            return Err(GgmlError::ContextFull {
                detail: format!(
                    "{} of {} bytes used, {n} more tensors do not fit",
                    self.used(),
                    self.mem_size
                ),
            });
        }
        Ok(())
    }

    fn wrap(&self, p: *mut sys::ggml_tensor, op: &'static str) -> Result<Tensor<'_>, GgmlError> {
        let t = NonNull::new(p)
            .map(|ptr| Tensor {
                ptr,
                _ctx: PhantomData,
            })
            .ok_or_else(|| GgmlError::Shape {
                op,
                detail: "ggml returned no tensor".into(),
            })?;
        // Count the operands from other contexts: the graph has room for
        // `max_outside` of them as leaves (ggml aborts past its size).
        let r = t.raw();
        let mut outside = self.outside.borrow_mut();
        for &q in r.src.iter().chain(std::iter::once(&r.view_src)) {
            if !q.is_null() && !self.owns(q) {
                outside.insert(q as usize);
            }
        }
        if outside.len() > self.max_outside {
            return Err(GgmlError::ContextFull {
                detail: format!(
                    "{op} reads more than the {} tensors of other contexts the context was made for",
                    self.max_outside
                ),
            });
        }
        Ok(t)
    }

    /// Whether `t` was made in this context (its metadata lies in the
    /// context's memory pool).
    fn owns(&self, t: *const sys::ggml_tensor) -> bool {
        // SAFETY: live context; reads its pool's address.
        let base = unsafe { sys::ggml_get_mem_buffer(self.ptr.as_ptr()) } as usize;
        (base..base + self.mem_size).contains(&(t as usize))
    }

    /// Once tensors have memory, no more may join the context: they would
    /// have none.
    fn unplaced(&self, op: &'static str) -> Result<(), GgmlError> {
        if self.memory.get().is_some() {
            return Err(GgmlError::Shape {
                op,
                detail: "the context's tensors are already allocated".into(),
            });
        }
        Ok(())
    }

    /// A new tensor of ggml type `ty` and dims `ne` (1 to 4, innermost first).
    pub fn new_tensor(&self, ty: u32, ne: &[usize], name: &str) -> Result<Tensor<'_>, GgmlError> {
        self.unplaced("new_tensor")?;
        if ne.is_empty() || ne.len() > 4 || row_size(ty, ne[0]).is_none() {
            return Err(GgmlError::TensorType {
                name: name.into(),
                ty: type_name(ty),
                why: format!("cannot hold dims {ne:?}"),
            });
        }
        self.room(1)?;
        let dims: Vec<i64> = ne.iter().map(|&n| n as i64).collect();
        // SAFETY: context live with room (checked); `dims` holds `ne.len()`
        // (1..=4) sizes; the type is one ggml knows with whole blocks per row.
        let t = unsafe {
            sys::ggml_new_tensor(self.ptr.as_ptr(), ty, dims.len() as i32, dims.as_ptr())
        };
        let t = self.wrap(t, "new_tensor")?;
        t.set_name(name);
        Ok(t)
    }

    /// The tensor of this context named `name`.
    pub fn get(&self, name: &str) -> Option<Tensor<'_>> {
        let c = CString::new(name).ok()?;
        // SAFETY: live context; ggml compares names, returns null if absent.
        let p = unsafe { sys::ggml_get_tensor(self.ptr.as_ptr(), c.as_ptr()) };
        NonNull::new(p).map(|ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }

    /// Gives every tensor of this context memory in one buffer on `backend`
    /// (weights, LoRA factors, inputs of small graphs). Once only.
    pub fn allocate(&self, backend: &Backend) -> Result<(), GgmlError> {
        if self.memory.get().is_some() {
            return Err(GgmlError::Data {
                name: "context".into(),
                detail: "already allocated".into(),
            });
        }
        // SAFETY: both live; every tensor of the context is unallocated (no
        // memory was given before); returns null when ggml cannot allocate.
        let buf =
            unsafe { sys::ggml_backend_alloc_ctx_tensors(self.ptr.as_ptr(), backend.ptr.as_ptr()) };
        let buf = NonNull::new(buf).ok_or_else(|| GgmlError::OutOfMemory {
            backend: backend.name.clone(),
            what: "tensors of a context".into(),
            bytes: 0,
        })?;
        let _ = self.memory.set(Memory::Buffer(buf));
        let _ = self.placed_on.set(backend.buffer_type() as usize);
        Ok(())
    }

    /// Bytes of backend memory the context holds.
    pub fn allocated_bytes(&self) -> usize {
        match self.memory.get() {
            // SAFETY: the buffer is owned by this context and live.
            Some(Memory::Buffer(b)) => unsafe { sys::ggml_backend_buffer_get_size(b.as_ptr()) },
            // SAFETY: the allocator is owned by this context and live;
            // buffer 0 is the only one (one buffer type).
            Some(Memory::Graph(g)) => unsafe { sys::ggml_gallocr_get_buffer_size(g.as_ptr(), 0) },
            Some(Memory::PlanOnly | Memory::Workspace) | None => 0,
        }
    }

    /// Makes this context's tensors stand-ins for planning: they keep no
    /// memory (and never will), but graph planning treats them as placed
    /// elsewhere, as uploaded weights are, so [`Graph::plan_bytes`] counts
    /// only a graph's own working memory. Each gets ggml's zero-size dummy
    /// buffer with no data: `ggml_gallocr` skips a tensor that has a buffer
    /// (ggml/src/ggml-alloc.c, `ggml_gallocr_is_allocated`), while every
    /// path that reads data ([`Backend::compute`], [`Context::allocate_graph`])
    /// refuses a tensor without data. The context cannot be allocated after.
    pub fn plan_only(&self) -> Result<(), GgmlError> {
        if self.memory.get().is_some() {
            return Err(GgmlError::Data {
                name: "context".into(),
                detail: "already allocated".into(),
            });
        }
        let buf = plan_only_buffer()?;
        // SAFETY: live context; its tensors are ours to mutate (no graph has
        // memory for them: the context is unallocated, checked above). A
        // tensor with neither data nor a view source gets the dummy buffer;
        // `data` stays null, so nothing can read or write through it.
        unsafe {
            let mut t = sys::ggml_get_first_tensor(self.ptr.as_ptr());
            while !t.is_null() {
                if (*t).data.is_null() && (*t).view_src.is_null() {
                    (*t).buffer = buf;
                }
                t = sys::ggml_get_next_tensor(self.ptr.as_ptr(), t);
            }
        }
        let _ = self.memory.set(Memory::PlanOnly);
        Ok(())
    }

    /// A graph computing `outputs` (tensors of this context, and everything
    /// they need). With `grads`,
    /// the graph has room for [`Graph::build_backward`].
    pub fn graph<'a>(
        &'a self,
        outputs: &[Tensor<'a>],
        grads: bool,
    ) -> Result<Graph<'a>, GgmlError> {
        if self.graph_made.get() {
            return Err(GgmlError::ContextFull {
                detail: "a context holds one graph".into(),
            });
        }
        self.room(0)?;
        self.graph_made.set(true);
        // SAFETY: context live with room for the graph's metadata (checked).
        let ptr = unsafe { sys::ggml_new_graph_custom(self.ptr.as_ptr(), self.graph_size, grads) };
        if ptr.is_null() {
            return Err(GgmlError::ContextFull {
                detail: "no room for the graph".into(),
            });
        }
        let mut g = Graph {
            ptr,
            ctx: self,
            grads,
            loss: None,
        };
        for &t in outputs {
            g.expand(t)?;
        }
        Ok(g)
    }

    /// Gives `graph`'s intermediate tensors memory on `backend` (inputs and
    /// outputs marked with [`Tensor::set_input`] / [`Tensor::set_output`]
    /// keep theirs for the whole compute). Once per context.
    pub fn allocate_graph(&self, graph: &Graph<'_>, backend: &Backend) -> Result<(), GgmlError> {
        if !std::ptr::eq(graph.ctx, self) || self.memory.get().is_some() {
            return Err(GgmlError::Data {
                name: "graph".into(),
                detail: "a context allocates one graph of its own, once".into(),
            });
        }
        graph.check_leaves()?;
        // SAFETY: the buffer type is ggml's, for the life of the process.
        let galloc = unsafe { sys::ggml_gallocr_new(backend.buffer_type()) };
        let galloc = NonNull::new(galloc).ok_or_else(|| GgmlError::OutOfMemory {
            backend: backend.name.clone(),
            what: "graph allocator".into(),
            bytes: 0,
        })?;
        let _ = self.memory.set(Memory::Graph(galloc));
        // SAFETY: allocator and graph live; tensors from other contexts that
        // already have memory keep it (gallocr skips allocated tensors).
        let ok = unsafe { sys::ggml_gallocr_alloc_graph(galloc.as_ptr(), graph.ptr) };
        if !ok {
            return Err(GgmlError::OutOfMemory {
                backend: backend.name.clone(),
                what: "graph intermediates".into(),
                bytes: 0,
            });
        }
        let _ = self.placed_on.set(backend.buffer_type() as usize);
        if graph.grads {
            // SAFETY: the graph has gradients and its tensors have memory
            // (just allocated): sets the loss gradient to 1, others to 0.
            unsafe { sys::ggml_graph_reset(graph.ptr) };
        }
        Ok(())
    }

    /// Gives `graph`'s intermediate tensors memory in `ws`'s buffer, reused
    /// graph after graph (grown when a graph needs more), instead of an
    /// allocation of their own. The tensors have memory while the returned
    /// guard lives; dropping it detaches them (reads then fail as for a
    /// tensor without memory), so no tensor can outlive the buffer's
    /// reuse by the next graph. Once per context.
    pub fn allocate_graph_in<'w>(
        &self,
        graph: &Graph<'_>,
        ws: &'w mut Workspace,
    ) -> Result<InWorkspace<'w, '_>, GgmlError> {
        if !std::ptr::eq(graph.ctx, self) || self.memory.get().is_some() {
            return Err(GgmlError::Data {
                name: "graph".into(),
                detail: "a context allocates one graph of its own, once".into(),
            });
        }
        graph.check_leaves()?;
        let _ = self.memory.set(Memory::Workspace);
        // SAFETY: allocator and graph live; tensors from other contexts that
        // already have memory keep it (gallocr skips allocated tensors). The
        // guard returned borrows the workspace mutably, so no other graph can
        // be allocated in it (and move its buffer) while these tensors are
        // attached.
        let ok = unsafe { sys::ggml_gallocr_alloc_graph(ws.galloc.as_ptr(), graph.ptr) };
        let guard = InWorkspace {
            _ws: PhantomData,
            ctx: self,
        };
        if !ok {
            return Err(GgmlError::OutOfMemory {
                backend: ws.backend.clone(),
                what: "graph intermediates".into(),
                bytes: 0,
            });
        }
        let _ = self.placed_on.set(ws.buffer_type as usize);
        if graph.grads {
            // SAFETY: as in `allocate_graph`.
            unsafe { sys::ggml_graph_reset(graph.ptr) };
        }
        Ok(guard)
    }

    // ---- ops -------------------------------------------------------------

    /// `a @ b` in ggml's convention: `a: [k, m, ..]`, `b: [k, n, ..]` ->
    /// `[m, n, ..]` (`a`'s dims 2 and 3 broadcast over `b`'s).
    pub fn mul_mat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (x, y) = (a.ne(), b.ne());
        if x[0] != y[0] || y[2] % x[2] != 0 || y[3] % x[3] != 0 || a.is_transposed() {
            return Err(shape("mul_mat", &[a, b]));
        }
        self.room(1)?;
        // SAFETY: context live with room; shapes checked as ggml_can_mul_mat does.
        self.wrap(
            unsafe { sys::ggml_mul_mat(self.ptr.as_ptr(), a.ptr.as_ptr(), b.ptr.as_ptr()) },
            "mul_mat",
        )
    }

    fn binary<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
        op: &'static str,
        f: unsafe extern "C" fn(
            *mut sys::ggml_context,
            *mut sys::ggml_tensor,
            *mut sys::ggml_tensor,
        ) -> *mut sys::ggml_tensor,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (x, y) = (a.ne(), b.ne());
        if (0..4).any(|i| y[i] == 0 || x[i] % y[i] != 0)
            || b.ty() != types::F32
            || a.ty() != types::F32
        {
            return Err(shape(op, &[a, b]));
        }
        self.room(1)?;
        // SAFETY: context live with room; f32 operands, `b` repeats over `a`
        // (ggml_can_repeat), as ggml asserts.
        self.wrap(
            unsafe { f(self.ptr.as_ptr(), a.ptr.as_ptr(), b.ptr.as_ptr()) },
            op,
        )
    }

    /// `a + b`, `b` broadcast over `a`.
    pub fn add<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.binary(a, b, "add", sys::ggml_add)
    }

    /// `a - b`, same shapes: ggml's automatic backward of SUB does not
    /// reduce a broadcast operand's gradient (it asserts), so broadcasts
    /// subtract with [`Context::add`] of a negated operand.
    pub fn sub<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        if a.ne() != b.ne() {
            return Err(shape("sub", &[a, b]));
        }
        self.binary(a, b, "sub", sys::ggml_sub)
    }

    /// `a * b` elementwise, `b` broadcast over `a`.
    pub fn mul<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.binary(a, b, "mul", sys::ggml_mul)
    }

    fn unary<'a>(
        &'a self,
        a: Tensor<'a>,
        op: &'static str,
        f: impl FnOnce(*mut sys::ggml_context, *mut sys::ggml_tensor) -> *mut sys::ggml_tensor,
    ) -> Result<Tensor<'a>, GgmlError> {
        if a.ty() != types::F32 {
            return Err(shape(op, &[a]));
        }
        self.room(1)?;
        self.wrap(f(self.ptr.as_ptr(), a.ptr.as_ptr()), op)
    }

    /// `s * a`.
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Result<Tensor<'a>, GgmlError> {
        // SAFETY (closure): context live with room, f32 operand (checked by unary).
        self.unary(a, "scale", |c, t| unsafe { sys::ggml_scale(c, t, s) })
    }

    /// `a / sqrt(mean(a^2) + eps)` over dim 0.
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Result<Tensor<'a>, GgmlError> {
        // SAFETY (closure): as for `scale`.
        self.unary(a, "rms_norm", |c, t| unsafe {
            sys::ggml_rms_norm(c, t, eps)
        })
    }

    unary_ops! {
        /// `a * sigmoid(a)`.
        silu => ggml_silu;
        /// Natural log, elementwise.
        log => ggml_log;
        /// `e^a`, elementwise.
        exp => ggml_exp;
        /// Sums over dim 0: `[n0, n1, ..]` -> `[1, n1, ..]`.
        sum_rows => ggml_sum_rows;
        /// Sum of all elements, `[1]`.
        sum => ggml_sum;
        /// A contiguous copy (of a permuted or viewed tensor).
        cont => ggml_cont;
        /// `a^2`, elementwise.
        sqr => ggml_sqr;
        /// `sqrt(a)`, elementwise.
        sqrt => ggml_sqrt;
        /// `1 / (1 + e^-a)`, elementwise.
        sigmoid => ggml_sigmoid;
    }

    /// `softmax(scale * a + mask)` over dim 0; `mask: [a.ne0, >= a.ne1]` f32,
    /// broadcast over dims 2 and 3.
    pub fn soft_max_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Result<Tensor<'a>, GgmlError> {
        if !a.is_contiguous() || a.ty() != types::F32 {
            return Err(shape("soft_max_ext", &[a]));
        }
        if let Some(m) = mask {
            let (x, y) = (a.ne(), m.ne());
            if m.ty() != types::F32
                || !m.is_contiguous()
                || y[0] != x[0]
                || y[1] < x[1]
                || x[2] % y[2] != 0
                || x[3] % y[3] != 0
            {
                return Err(shape("soft_max_ext", &[a, m]));
            }
        }
        self.room(1)?;
        let m = mask.map_or(std::ptr::null_mut(), |m| m.ptr.as_ptr());
        // SAFETY: context live with room; operands checked as ggml asserts.
        self.wrap(
            unsafe { sys::ggml_soft_max_ext(self.ptr.as_ptr(), a.ptr.as_ptr(), m, scale, 0.0) },
            "soft_max_ext",
        )
    }

    /// Rotary embedding of `a: [head_dim, n_head, n_tok]` at positions
    /// `pos: [n_tok]` (i32): the first `n_rot` dims of each head, `neox`
    /// pairing `i, i + n_rot/2` (else adjacent pairs), no scaling.
    pub fn rope<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        n_rot: usize,
        neox: bool,
        freq_base: f32,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (x, p) = (a.ne(), pos.ne());
        if pos.ty() != types::I32
            || p[1] != 1
            || p[2] != 1
            || p[3] != 1
            || x[2] != p[0]
            || n_rot as i64 > x[0]
            || !n_rot.is_multiple_of(2)
        {
            return Err(shape("rope", &[a, pos]));
        }
        self.room(1)?;
        let mode = if neox {
            sys::LLAMA_ROPE_TYPE_NEOX
        } else {
            sys::LLAMA_ROPE_TYPE_NORM
        };
        // SAFETY: context live with room; `pos` an i32 vector of one
        // position per dim-2 entry, even mode, no frequency factors: what
        // ggml_rope_impl asserts. ext_factor 0 turns YaRN off.
        self.wrap(
            unsafe {
                sys::ggml_rope_ext(
                    self.ptr.as_ptr(),
                    a.ptr.as_ptr(),
                    pos.ptr.as_ptr(),
                    std::ptr::null_mut(),
                    n_rot as i32,
                    mode,
                    0,
                    freq_base,
                    1.0,
                    0.0,
                    1.0,
                    0.0,
                    0.0,
                )
            },
            "rope",
        )
    }

    /// Rows `idx` (i32, `[n]`) of `a: [n_cols, n_rows]`, as f32 `[n_cols, n]`
    /// (dequantizes a quantized `a`).
    pub fn get_rows<'a>(&'a self, a: Tensor<'a>, idx: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (x, i) = (a.ne(), idx.ne());
        if idx.ty() != types::I32 || x[2] != i[1] || x[3] != i[2] || i[3] != 1 {
            return Err(shape("get_rows", &[a, idx]));
        }
        self.room(1)?;
        // SAFETY: context live with room; index type and dims checked as
        // ggml asserts. Index values are checked by the CPU kernel (and are
        // built by this crate in range).
        self.wrap(
            unsafe { sys::ggml_get_rows(self.ptr.as_ptr(), a.ptr.as_ptr(), idx.ptr.as_ptr()) },
            "get_rows",
        )
    }

    /// `a` with dims `ne` (same element count; `a` contiguous).
    pub fn reshape<'a>(&'a self, a: Tensor<'a>, ne: &[usize]) -> Result<Tensor<'a>, GgmlError> {
        let n: i64 = ne.iter().map(|&v| v as i64).product();
        if !a.is_contiguous() || n != a.n_elements() || ne.is_empty() || ne.len() > 4 {
            return Err(GgmlError::Shape {
                op: "reshape",
                detail: format!("{} to {ne:?}", describe(a)),
            });
        }
        self.room(1)?;
        let c = self.ptr.as_ptr();
        let p = a.ptr.as_ptr();
        let d: Vec<i64> = ne.iter().map(|&v| v as i64).collect();
        // SAFETY: context live with room; `a` contiguous with the same
        // element count, as ggml asserts.
        let t = unsafe {
            match d.len() {
                1 => sys::ggml_reshape_1d(c, p, d[0]),
                2 => sys::ggml_reshape_2d(c, p, d[0], d[1]),
                3 => sys::ggml_reshape_3d(c, p, d[0], d[1], d[2]),
                _ => sys::ggml_reshape_4d(c, p, d[0], d[1], d[2], d[3]),
            }
        };
        self.wrap(t, "reshape")
    }

    /// `a` with its dims moved: dim `i` goes to position `axes[i]`.
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [usize; 4]) -> Result<Tensor<'a>, GgmlError> {
        let mut seen = [false; 4];
        for &x in &axes {
            if x > 3 || seen[x] {
                return Err(GgmlError::Shape {
                    op: "permute",
                    detail: format!("axes {axes:?}"),
                });
            }
            seen[x] = true;
        }
        self.room(1)?;
        let [a0, a1, a2, a3] = axes.map(|v| v as i32);
        // SAFETY: context live with room; axes a permutation of 0..4.
        self.wrap(
            unsafe { sys::ggml_permute(self.ptr.as_ptr(), a.ptr.as_ptr(), a0, a1, a2, a3) },
            "permute",
        )
    }

    /// The first `n1` columns of a 2-D `a: [n0, >= n1]`.
    pub fn columns<'a>(&'a self, a: Tensor<'a>, n1: usize) -> Result<Tensor<'a>, GgmlError> {
        let x = a.ne();
        if x[2] != 1 || x[3] != 1 || n1 as i64 > x[1] {
            return Err(GgmlError::Shape {
                op: "columns",
                detail: format!("{n1} columns of {}", describe(a)),
            });
        }
        self.room(1)?;
        // SAFETY: context live with room; the view lies inside `a` (n1 <= a.ne1).
        let t = unsafe {
            sys::ggml_view_2d(
                self.ptr.as_ptr(),
                a.ptr.as_ptr(),
                x[0],
                n1 as i64,
                a.nb()[1],
                0,
            )
        };
        self.wrap(t, "columns")
    }

    /// A view of `a` with dims `ne` and `a`'s strides, starting `offset`
    /// bytes into it: a slice along any dims (columns of a matrix, a block
    /// of tokens, rows of a vocabulary chunk). Must lie inside `a`.
    pub fn view<'a>(
        &'a self,
        a: Tensor<'a>,
        ne: [usize; 4],
        offset: usize,
    ) -> Result<Tensor<'a>, GgmlError> {
        let nb = a.nb();
        let last = ne
            .iter()
            .zip(nb)
            .map(|(&n, b)| n.saturating_sub(1) * b)
            .sum::<usize>();
        // SAFETY: live tensor; reads its type's size.
        let elem = unsafe { sys::ggml_type_size(a.ty()) };
        let plain = row_size(a.ty(), 1) == Some(elem);
        if ne.contains(&0) || !plain || offset + last + elem > a.n_bytes() {
            return Err(GgmlError::Shape {
                op: "view",
                detail: format!("{ne:?} at byte {offset} of {}", describe(a)),
            });
        }
        self.room(1)?;
        let [n0, n1, n2, n3] = ne.map(|v| v as i64);
        // SAFETY: context live with room; the view lies inside `a` (checked
        // against its byte size with its own strides, one element per block).
        let t = unsafe {
            sys::ggml_view_4d(
                self.ptr.as_ptr(),
                a.ptr.as_ptr(),
                n0,
                n1,
                n2,
                n3,
                nb[1],
                nb[2],
                nb[3],
                offset,
            )
        };
        self.wrap(t, "view")
    }

    /// `a` with dims 0 and 1 swapped (a view; [`Context::cont`] makes it
    /// contiguous, as `mul_mat` needs).
    pub fn transpose<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.room(1)?;
        // SAFETY: context live with room; any tensor can be transposed.
        self.wrap(
            unsafe { sys::ggml_transpose(self.ptr.as_ptr(), a.ptr.as_ptr()) },
            "transpose",
        )
    }

    /// Copies `a` into `b` (same element count, both f32; `b` may be a
    /// view of a tensor that outlives the graph): the node that writes a
    /// graph's result into memory of another context.
    pub fn cpy<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        if a.n_elements() != b.n_elements() || a.ty() != types::F32 || b.ty() != types::F32 {
            return Err(shape("cpy", &[a, b]));
        }
        self.room(1)?;
        // SAFETY: context live with room; equal element counts, as ggml asserts.
        self.wrap(
            unsafe { sys::ggml_cpy(self.ptr.as_ptr(), a.ptr.as_ptr(), b.ptr.as_ptr()) },
            "cpy",
        )
    }

    /// `a / b` elementwise, `b` broadcast over `a`.
    pub fn div<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.binary(a, b, "div", sys::ggml_div)
    }

    /// `s * a + bias`.
    pub fn scale_bias<'a>(
        &'a self,
        a: Tensor<'a>,
        s: f32,
        bias: f32,
    ) -> Result<Tensor<'a>, GgmlError> {
        // SAFETY (closure): as for `scale`.
        self.unary(a, "scale_bias", |c, t| unsafe {
            sys::ggml_scale_bias(c, t, s, bias)
        })
    }

    /// `a` and `b` joined along `dim` (every other dim equal; f32).
    pub fn concat<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
        dim: usize,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (x, y) = (a.ne(), b.ne());
        if dim > 3
            || (0..4).any(|i| i != dim && x[i] != y[i])
            || a.ty() != types::F32
            || b.ty() != types::F32
        {
            return Err(shape("concat", &[a, b]));
        }
        self.room(1)?;
        // SAFETY: context live with room; same type, dims equal but `dim`.
        self.wrap(
            unsafe {
                sys::ggml_concat(
                    self.ptr.as_ptr(),
                    a.ptr.as_ptr(),
                    b.ptr.as_ptr(),
                    dim as i32,
                )
            },
            "concat",
        )
    }

    /// `a` with `before[i]` zeros prepended and `after[i]` appended along
    /// each dim `i` (f32).
    pub fn pad<'a>(
        &'a self,
        a: Tensor<'a>,
        before: [usize; 4],
        after: [usize; 4],
    ) -> Result<Tensor<'a>, GgmlError> {
        let [l0, l1, l2, l3] = before.map(|v| v as i32);
        let [r0, r1, r2, r3] = after.map(|v| v as i32);
        // SAFETY (closure): as for `scale`; ggml_pad_ext takes any f32 tensor
        // and non-negative pads.
        self.unary(a, "pad", |c, t| unsafe {
            sys::ggml_pad_ext(c, t, l0, r0, l1, r1, l2, r2, l3, r3)
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: each owned once; the backend memory goes before the
        // metadata that points into it.
        unsafe {
            match self.memory.take() {
                Some(Memory::Buffer(b)) => sys::ggml_backend_buffer_free(b.as_ptr()),
                Some(Memory::Graph(g)) => sys::ggml_gallocr_free(g.as_ptr()),
                Some(Memory::PlanOnly | Memory::Workspace) | None => {}
            }
            sys::ggml_free(self.ptr.as_ptr());
        }
    }
}

/// A graph allocator whose one buffer serves graph after graph (see
/// [`Context::allocate_graph_in`]): a pass of many small graphs allocates
/// device memory a few times as the graphs grow, not once per graph.
pub struct Workspace {
    galloc: NonNull<sys::ggml_gallocr>,
    buffer_type: sys::ggml_backend_buffer_type_t,
    backend: String,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("backend", &self.backend)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Workspace {
    /// An empty workspace on `backend`'s buffer type.
    pub fn new(backend: &Backend) -> Result<Workspace, GgmlError> {
        let buffer_type = backend.buffer_type();
        // SAFETY: the buffer type is ggml's, for the life of the process.
        let galloc =
            NonNull::new(unsafe { sys::ggml_gallocr_new(buffer_type) }).ok_or_else(|| {
                GgmlError::OutOfMemory {
                    backend: backend.name.clone(),
                    what: "graph allocator".into(),
                    bytes: 0,
                }
            })?;
        Ok(Workspace {
            galloc,
            buffer_type,
            backend: backend.name.clone(),
        })
    }

    /// Bytes of device memory its buffer holds now.
    pub fn bytes(&self) -> usize {
        // SAFETY: live allocator with one buffer type (buffer 0).
        unsafe { sys::ggml_gallocr_get_buffer_size(self.galloc.as_ptr(), 0) }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // SAFETY: owned, freed once; no tensor is attached to its buffer
        // (every guard borrowing it is gone).
        unsafe { sys::ggml_gallocr_free(self.galloc.as_ptr()) }
    }
}

/// The tensors of a context attached to a [`Workspace`]'s buffer; dropping
/// it detaches them.
pub struct InWorkspace<'w, 'c> {
    _ws: PhantomData<&'w mut Workspace>,
    ctx: &'c Context,
}

impl Drop for InWorkspace<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: live context; its tensors' data pointers point into the
        // workspace buffer (or into other contexts' memory, for views of
        // their tensors), and are cleared so that nothing reads through them
        // after the buffer is reused.
        unsafe {
            let c = self.ctx.ptr.as_ptr();
            let mut t = sys::ggml_get_first_tensor(c);
            while !t.is_null() {
                (*t).data = std::ptr::null_mut();
                (*t).buffer = std::ptr::null_mut();
                t = sys::ggml_get_next_tensor(c, t);
            }
        }
    }
}

fn describe(t: Tensor<'_>) -> String {
    let ne = t.ne();
    format!("`{}` {} {:?}", t.name(), t.type_name(), ne)
}

fn shape(op: &'static str, ts: &[Tensor<'_>]) -> GgmlError {
    GgmlError::Shape {
        op,
        detail: ts
            .iter()
            .map(|&t| describe(t))
            .collect::<Vec<_>>()
            .join(" with "),
    }
}

/// A tensor of a context that lives at least `'a`.
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'a Context>,
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(*self))
    }
}

impl<'a> Tensor<'a> {
    fn raw(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives in a context that outlives `'a` (the
        // handle borrows it); ggml does not mutate metadata behind our back
        // outside calls made through `&Context`.
        unsafe { self.ptr.as_ref() }
    }

    /// Dims, innermost first.
    pub fn ne(&self) -> [i64; 4] {
        self.raw().ne
    }

    /// Strides in bytes.
    pub fn nb(&self) -> [usize; 4] {
        self.raw().nb
    }

    /// ggml type id.
    pub fn ty(&self) -> u32 {
        self.raw().type_
    }

    /// ggml type name.
    pub fn type_name(&self) -> String {
        type_name(self.ty())
    }

    /// Elements.
    pub fn n_elements(&self) -> i64 {
        self.ne().iter().product()
    }

    /// Bytes of its data.
    pub fn n_bytes(&self) -> usize {
        // SAFETY: live tensor (see `raw`); reads metadata only.
        unsafe { sys::ggml_nbytes(self.ptr.as_ptr()) }
    }

    /// Its name.
    pub fn name(&self) -> String {
        let n = &self.raw().name;
        let bytes: Vec<u8> = n
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// ggml's description of its op (`MUL_MAT`, `SILU`, ...).
    pub fn op_desc(&self) -> String {
        // SAFETY: live tensor.
        c_str(unsafe { sys::ggml_op_desc(self.ptr.as_ptr()) })
    }

    /// ggml's op id (`GGML_OP_*`).
    pub fn op(&self) -> u32 {
        self.raw().op
    }

    /// The op's parameters as ggml stores them: 16 32-bit words (ints, or
    /// floats by their bits, per op).
    pub fn op_params(&self) -> [i32; 16] {
        self.raw().op_params
    }

    /// ggml's own contiguity predicates of it (to cross-check
    /// [`crate::audit::Operand`]'s transcription of them).
    pub fn ggml_contiguity(&self) -> [bool; 5] {
        let p = self.ptr.as_ptr();
        // SAFETY: live tensor; each predicate reads its metadata only.
        unsafe {
            [
                sys::ggml_is_contiguous(p),
                sys::ggml_is_contiguous_1(p),
                sys::ggml_is_contiguous_2(p),
                sys::ggml_is_contiguous_rows(p),
                sys::ggml_is_transposed(p),
            ]
        }
    }

    /// Source `i` of its op.
    pub fn src(&self, i: usize) -> Option<Tensor<'a>> {
        let p = *self.raw().src.get(i)?;
        NonNull::new(p).map(|ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }

    fn is_transposed(&self) -> bool {
        let nb = self.nb();
        nb[0] > nb[1]
    }

    fn is_contiguous(&self) -> bool {
        // SAFETY: live tensor; reads metadata only.
        unsafe { sys::ggml_is_contiguous(self.ptr.as_ptr()) }
    }

    /// Renames it (truncated to ggml's 63 bytes).
    pub fn set_name(self, name: &str) -> Self {
        let c = CString::new(name.replace('\0', " ")).unwrap_or_default();
        // SAFETY: live tensor; ggml copies at most its name size, NUL-terminated.
        unsafe { sys::ggml_set_name(self.ptr.as_ptr(), c.as_ptr()) };
        self
    }

    /// Marks it as a graph input (the allocator gives it memory of its own).
    pub fn set_input(self) -> Self {
        // SAFETY: live tensor; sets a flag.
        unsafe { sys::ggml_set_input(self.ptr.as_ptr()) };
        self
    }

    /// Marks it as a graph output (its memory is not reused within the graph).
    pub fn set_output(self) -> Self {
        // SAFETY: live tensor; sets a flag.
        unsafe { sys::ggml_set_output(self.ptr.as_ptr()) };
        self
    }

    /// Marks it as a trainable parameter (an f32 tensor with memory).
    pub fn set_param(self) -> Result<Self, GgmlError> {
        if self.ty() != types::F32 || !self.raw().src.iter().all(|s| s.is_null()) {
            return Err(shape("set_param", &[self]));
        }
        // SAFETY: live leaf tensor (no sources), as ggml asserts.
        unsafe { sys::ggml_set_param(self.ptr.as_ptr()) };
        Ok(self)
    }

    /// Marks it as the loss (an f32 scalar).
    pub fn set_loss(self) -> Result<Self, GgmlError> {
        if self.ty() != types::F32 || self.n_elements() != 1 {
            return Err(shape("set_loss", &[self]));
        }
        // SAFETY: live f32 scalar, as ggml asserts.
        unsafe { sys::ggml_set_loss(self.ptr.as_ptr()) };
        Ok(self)
    }

    /// The buffer holding its data (its view source's, for a view), or null.
    fn buffer(&self) -> *mut sys::ggml_backend_buffer {
        let r = self.raw();
        if r.view_src.is_null() {
            r.buffer
        } else {
            // SAFETY: a view's source lives in a context at least as long.
            unsafe { (*r.view_src).buffer }
        }
    }

    fn has_memory(&self) -> bool {
        !self.buffer().is_null() && !self.raw().data.is_null()
    }

    fn check_data(&self, ty: u32, bytes: usize) -> Result<(), GgmlError> {
        let detail = if !self.has_memory() {
            "has no memory (allocate its context or graph first)".to_string()
        } else if self.ty() != ty {
            format!("is {}, the data {}", self.type_name(), type_name(ty))
        } else if bytes != self.n_bytes() || !self.is_contiguous() {
            format!("holds {} bytes, the data has {bytes}", self.n_bytes())
        } else {
            return Ok(());
        };
        Err(GgmlError::Data {
            name: self.name(),
            detail,
        })
    }

    /// Copies raw bytes of its own type into it (the whole tensor).
    pub fn set_bytes(&self, data: &[u8]) -> Result<(), GgmlError> {
        self.check_data(self.ty(), data.len())?;
        // SAFETY: the tensor has memory of exactly `data.len()` bytes
        // (checked), contiguous; ggml copies to the backend.
        unsafe {
            sys::ggml_backend_tensor_set(self.ptr.as_ptr(), data.as_ptr().cast(), 0, data.len())
        };
        Ok(())
    }

    /// Copies f32 values into it (an f32 tensor of that many elements).
    pub fn set_f32(&self, data: &[f32]) -> Result<(), GgmlError> {
        self.set_values(types::F32, data)
    }

    /// Copies i32 values into it.
    pub fn set_i32(&self, data: &[i32]) -> Result<(), GgmlError> {
        self.set_values(types::I32, data)
    }

    /// Copies plain values (f32, i32) into a tensor of type `ty` holding
    /// exactly as many bytes.
    fn set_values<T: Copy>(&self, ty: u32, data: &[T]) -> Result<(), GgmlError> {
        let bytes = std::mem::size_of_val(data);
        self.check_data(ty, bytes)?;
        // SAFETY: as `set_bytes`: size, type and memory checked; `T` is a
        // plain number type, so its bytes are the tensor's elements.
        unsafe { sys::ggml_backend_tensor_set(self.ptr.as_ptr(), data.as_ptr().cast(), 0, bytes) };
        Ok(())
    }

    /// Its values (an f32 tensor with memory).
    pub fn get_f32(&self) -> Result<Vec<f32>, GgmlError> {
        let n = self.n_elements().max(0) as usize;
        self.check_data(types::F32, n * 4)?;
        let mut out = vec![0f32; n];
        // SAFETY: the tensor has memory of exactly n * 4 bytes (checked),
        // contiguous; `out` holds as many.
        unsafe {
            sys::ggml_backend_tensor_get(self.ptr.as_ptr(), out.as_mut_ptr().cast(), 0, n * 4)
        };
        Ok(out)
    }
}

/// A computation graph in a context's metadata.
pub struct Graph<'a> {
    ptr: *mut sys::ggml_cgraph,
    ctx: &'a Context,
    grads: bool,
    /// The loss of the backward pass, once built.
    loss: Option<Tensor<'a>>,
}

impl<'a> Graph<'a> {
    /// Every leaf the graph reads must have data: memory of its own
    /// (weights, adapters) or be a marked graph input that the caller fills.
    /// The graph allocator would otherwise give an unallocated weight fresh,
    /// uninitialized memory and the graph would compute on garbage. The one
    /// other leaf is the loss gradient the backward adds (set to 1 at
    /// allocation).
    fn check_leaves(&self) -> Result<(), GgmlError> {
        let loss_grad = self.loss.and_then(|l| {
            // SAFETY: live graph with gradients (a loss is only recorded by
            // build_backward) and live tensor; reads the graph's table.
            NonNull::new(unsafe { sys::ggml_graph_get_grad_acc(self.ptr, l.ptr.as_ptr()) })
        });
        for node in self.nodes() {
            let n_src = node.raw().src.len();
            for t in (0..n_src).filter_map(|i| node.src(i)) {
                let r = t.raw();
                let input = r.flags & sys::GGML_TENSOR_FLAG_INPUT as i32 != 0;
                let leaf = r.op == sys::GGML_OP_NONE && r.view_src.is_null();
                if leaf && !input && !t.has_memory() && Some(t.ptr) != loss_grad {
                    return Err(GgmlError::Data {
                        name: t.name(),
                        detail: format!(
                            "read by `{}` but has no data: allocate its context or mark it as a graph input",
                            node.name()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Bytes of working memory this graph would take on `backend`'s buffer
    /// type, planned by ggml's graph allocator without allocating anything
    /// (`ggml_gallocr_reserve_n_size`: the size `ggml_gallocr_reserve` would
    /// allocate, ggml/src/ggml-alloc.c). Counts the tensors of the graph's
    /// own context, inputs included; tensors of other contexts (weights,
    /// adapters) must have memory or be [`Context::plan_only`], else they
    /// would be planned as if the graph owned them.
    pub fn plan_bytes(&self, backend: &Backend) -> Result<usize, GgmlError> {
        for node in self.nodes() {
            let n_src = node.raw().src.len();
            for t in (0..n_src).filter_map(|i| node.src(i)) {
                let r = t.raw();
                let leaf = r.op == sys::GGML_OP_NONE && r.view_src.is_null();
                if leaf && !self.ctx.owns(t.ptr.as_ptr()) && t.buffer().is_null() {
                    return Err(GgmlError::Data {
                        name: t.name(),
                        detail: format!(
                            "read by `{}` but placed nowhere: allocate its context or make it plan-only",
                            node.name()
                        ),
                    });
                }
            }
        }
        // SAFETY: the buffer type is ggml's, for the life of the process.
        let galloc = NonNull::new(unsafe { sys::ggml_gallocr_new(backend.buffer_type()) })
            .ok_or_else(|| GgmlError::OutOfMemory {
                backend: backend.name.clone(),
                what: "graph allocator".into(),
                bytes: 0,
            })?;
        let mut size = 0usize;
        // SAFETY: allocator and graph live; one buffer type, so `sizes` has
        // one entry; null buffer ids put every tensor in it. With no_alloc
        // the planning cannot fail (its one failure is allocating) and it
        // writes only the allocator's own tables, not the graph's tensors.
        unsafe {
            sys::ggml_gallocr_reserve_n_size(
                galloc.as_ptr(),
                self.ptr,
                std::ptr::null(),
                std::ptr::null(),
                &mut size,
            );
            sys::ggml_gallocr_free(galloc.as_ptr());
        }
        Ok(size)
    }

    /// Nodes (computed tensors), in execution order.
    pub fn nodes(&self) -> impl Iterator<Item = Tensor<'a>> + '_ {
        // SAFETY: live graph.
        let n = unsafe { sys::ggml_graph_n_nodes(self.ptr) };
        (0..n).filter_map(move |i| {
            // SAFETY: `i` below the node count.
            let p = unsafe { sys::ggml_graph_node(self.ptr, i) };
            NonNull::new(p).map(|ptr| Tensor {
                ptr,
                _ctx: PhantomData,
            })
        })
    }

    /// Node count.
    pub fn n_nodes(&self) -> usize {
        // SAFETY: live graph.
        unsafe { sys::ggml_graph_n_nodes(self.ptr) as usize }
    }

    /// Adds `t` (a tensor of the graph's context) and what it needs.
    pub fn expand(&mut self, t: Tensor<'a>) -> Result<(), GgmlError> {
        if !self.ctx.owns(t.ptr.as_ptr()) {
            return Err(GgmlError::Shape {
                op: "graph",
                detail: format!("{t:?} belongs to another context"),
            });
        }
        // SAFETY: live graph and tensor. The graph holds `graph_size` nodes
        // and as many leaves: nodes are tensors of this context (at most
        // `max_tensors`, enforced at creation; `t` is one), leaves those
        // plus the tensors of other contexts its ops read (at most
        // `max_outside`, counted by every op), so ggml's capacity assertion
        // cannot fire.
        unsafe { sys::ggml_build_forward_expand(self.ptr, t.ptr.as_ptr()) };
        Ok(())
    }

    /// Appends the backward pass: the gradient of `loss` (marked with
    /// [`Tensor::set_loss`], a node of this graph) with respect to each of
    /// `params` (marked with [`Tensor::set_param`]). Only ops with a backward
    /// in ggml may lie between them (the graph builders of this crate use
    /// only those).
    pub fn build_backward(
        &mut self,
        loss: Tensor<'a>,
        params: &[Tensor<'a>],
    ) -> Result<(), GgmlError> {
        let flag = |t: &Tensor, f: sys::ggml_tensor_flag| t.raw().flags & f as i32 != 0;
        let loss_in_graph = self.nodes().any(|n| n.ptr == loss.ptr);
        if !self.grads
            || !loss_in_graph
            || !flag(&loss, sys::GGML_TENSOR_FLAG_LOSS)
            || params.is_empty()
            || !params.iter().all(|p| flag(p, sys::GGML_TENSOR_FLAG_PARAM))
        {
            return Err(GgmlError::Shape {
                op: "build_backward",
                detail: "needs a graph with gradients, its loss node and marked parameters".into(),
            });
        }
        // The backward makes a few tensors per forward node.
        self.ctx.room(6 * self.n_nodes())?;
        // SAFETY: live graph with gradients, a loss node and parameters
        // (checked), room in the context (so in the graph, see `expand`);
        // null grad_accs: gradients are computed, not accumulated.
        unsafe {
            sys::ggml_build_backward_expand(self.ctx.ptr.as_ptr(), self.ptr, std::ptr::null_mut())
        };
        self.loss = Some(loss);
        Ok(())
    }

    /// The gradient of parameter `t` (after [`Graph::build_backward`]).
    pub fn grad(&self, t: Tensor<'a>) -> Option<Tensor<'a>> {
        if !self.grads {
            return None;
        }
        // SAFETY: live graph with gradients and live tensor.
        let p = unsafe { sys::ggml_graph_get_grad(self.ptr, t.ptr.as_ptr()) };
        NonNull::new(p).map(|ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }
}
