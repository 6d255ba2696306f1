//! The per-call linear-memory cap. Tunables belong to the wasmer engine,
//! which all calls share, while the limit belongs to the call: the call sets a
//! thread-local cap before instantiating, and the engine's tunables read it
//! when the instance creates its memory.

use std::cell::Cell;
use std::ptr::NonNull;

use wasmer::sys::vm::{
    MemoryError, MemoryStyle, TableStyle, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition,
};
use wasmer::sys::{BaseTunables, Tunables};
use wasmer::{MemoryType, Pages, TableType};

thread_local! {
    /// Linear-memory cap (bytes) for instances created on this thread. Tunables
    /// belong to the engine, limits to the call, so the call sets this before
    /// instantiating.
    static MEMORY_CAP: Cell<u64> = const { Cell::new(256 << 20) };
}

/// Sets the memory cap for instances created on this thread from now on.
pub(super) fn set_thread_memory_cap(bytes: u64) {
    MEMORY_CAP.with(|c| c.set(bytes));
}

/// Base tunables with every memory's maximum lowered to the thread's cap, so
/// `memory.grow` past it fails and CPython raises `MemoryError` cleanly.
pub(super) struct CappedMemory {
    base: BaseTunables,
}

impl CappedMemory {
    pub(super) fn new(base: BaseTunables) -> CappedMemory {
        CappedMemory { base }
    }

    fn capped(&self, ty: &MemoryType) -> MemoryType {
        let cap_pages = Pages((MEMORY_CAP.with(|c| c.get()) / 65536).max(1) as u32);
        let mut ty = *ty;
        let max = ty.maximum.map_or(cap_pages, |m| m.min(cap_pages));
        ty.maximum = Some(max.max(ty.minimum));
        ty
    }
}

impl Tunables for CappedMemory {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
    ) -> Result<VMMemory, MemoryError> {
        self.base.create_host_memory(&self.capped(ty), style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        // SAFETY: forwarded unchanged from our caller, who guarantees it.
        unsafe {
            self.base
                .create_vm_memory(&self.capped(ty), style, vm_definition_location)
        }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(ty, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        // SAFETY: forwarded unchanged from our caller, who guarantees it.
        unsafe { self.base.create_vm_table(ty, style, vm_definition_location) }
    }
}
