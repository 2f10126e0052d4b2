//! Where to put a Go function's probes, from its machine code (x86-64 only).
//!
//! - **Exits**: Go moves goroutine stacks, so a uretprobe (which overwrites the return address
//!   on the stack) corrupts them. Instead, every `RET` instruction of the function gets a plain
//!   uprobe. They are found by decoding the function from its entry to its end (the next
//!   function's entry): a byte scan for `0xC3` would also hit immediates and displacements.
//! - **Entry**: a Go function starts with a stack check (`CMPQ SP, 16(R14); JLS grow`, or
//!   `LEAQ -n(SP), R12; CMPQ R12, 16(R14); JLS grow` for large frames). When the stack must grow,
//!   `runtime.morestack` copies it and jumps back to the function's first instruction, so a probe
//!   there would count one call twice. The entry probe goes on the instruction after that jump;
//!   a function without the check (no stack growth possible) is probed at its first instruction.
//!
//! Bounded: at most [`MAX_CODE`] bytes are decoded; an undecodable instruction fails the whole
//! function (a missed `RET` would leave a call open for ever).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Longest function body decoded.
pub const MAX_CODE: usize = 1 << 20;
/// The stack check is among the first few instructions.
const PROLOGUE_INSNS: usize = 6;
/// Most return instructions accepted in one function.
pub const MAX_RETURNS: usize = 64;

/// Probe points of one function, as virtual addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Points {
    /// Where the entry probe goes (after the stack check).
    pub entry: u64,
    /// Every `RET`.
    pub returns: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("{0} bytes of code, more than the limit of {MAX_CODE}")]
    TooLarge(usize),
    #[error("undecodable instruction at {0:#x}")]
    Invalid(u64),
    #[error("no return instruction")]
    NoReturn,
    #[error("more than {MAX_RETURNS} return instructions")]
    TooManyReturns,
}

/// Decodes `code`, the whole function loaded at `addr`.
pub fn points(code: &[u8], addr: u64) -> Result<Points, CodeError> {
    if code.len() > MAX_CODE {
        return Err(CodeError::TooLarge(code.len()));
    }
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut entry = None;
    let mut checked_stack = false;
    let mut returns = Vec::new();
    let mut index = 0usize;
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.code() == Code::INVALID {
            // Go pads between functions with INT3; anything undecodable inside is an error.
            return Err(CodeError::Invalid(insn.ip()));
        }
        if index < PROLOGUE_INSNS && entry.is_none() {
            if is_stack_check(&insn) {
                checked_stack = true;
            } else if checked_stack && insn.mnemonic() == Mnemonic::Jbe && decoder.can_decode() {
                // The body starts after the jump; a jump that ends the code has no body after
                // it (the probe would land past the function): no usable check, see below.
                entry = Some(insn.next_ip());
            }
        }
        if insn.mnemonic() == Mnemonic::Ret {
            if returns.len() == MAX_RETURNS {
                return Err(CodeError::TooManyReturns);
            }
            returns.push(insn.ip());
        }
        index += 1;
    }
    if returns.is_empty() {
        return Err(CodeError::NoReturn);
    }
    Ok(Points {
        entry: entry.unwrap_or(addr),
        returns,
    })
}

/// `CMP reg, [R14 + 16]` (or with the operands the other way round): the goroutine's stack
/// guard, `g.stackguard0`, compared with the stack pointer.
fn is_stack_check(insn: &Instruction) -> bool {
    insn.mnemonic() == Mnemonic::Cmp
        && (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
        && insn.memory_base() == Register::R14
        && insn.memory_displacement64() == 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Go 1.19 function: stack check, frame, a byte 0xC3 inside an immediate, two returns,
    /// the morestack tail, INT3 padding.
    const FUNC: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
        0x76, 0x1a, // jbe +0x1a (morestack)
        0x55, // push rbp
        0x48, 0x89, 0xe5, // mov rbp, rsp
        0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3
        0x48, 0x85, 0xc0, // test rax, rax
        0x74, 0x02, // je +2
        0x5d, // pop rbp
        0xc3, // ret
        0x31, 0xc0, // xor eax, eax
        0x5d, // pop rbp
        0xc3, // ret
        0x90, 0x90, 0x90, 0x90, 0x90, // nops up to the tail
        0xe8, 0x00, 0x00, 0x00, 0x00, // call morestack
        0xeb, 0xd9, // jmp to the start
        0xcc, 0xcc, // padding
    ];

    #[test]
    fn finds_returns_and_body_entry() {
        let p = points(FUNC, 0x1000).unwrap();
        assert_eq!(p.entry, 0x1006, "after the stack check's jump");
        assert_eq!(p.returns, vec![0x1015, 0x1019]);
    }

    #[test]
    fn large_frame_prologue() {
        let mut code = vec![
            0x4c, 0x8d, 0x64, 0x24, 0xf8, // lea r12, [rsp-8]
            0x4d, 0x3b, 0x66, 0x10, // cmp r12, [r14+0x10]
            0x0f, 0x86, 0x01, 0x00, 0x00, 0x00, // jbe near +1
            0xc3, // ret
            0xcc,
        ];
        let p = points(&code, 0).unwrap();
        assert_eq!(p.entry, 15);
        assert_eq!(p.returns, vec![15]);
        // Without a stack check the entry is the first instruction.
        code.drain(..15);
        assert_eq!(points(&code, 0x40).unwrap().entry, 0x40);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(points(&[0x90, 0x90], 0), Err(CodeError::NoReturn));
        assert_eq!(points(&[], 0), Err(CodeError::NoReturn));
        // Cut inside an instruction.
        assert_eq!(points(&[0xc3, 0x48, 0x89], 0), Err(CodeError::Invalid(1)));
        assert_eq!(
            points(&vec![0x90; MAX_CODE + 1], 0),
            Err(CodeError::TooLarge(MAX_CODE + 1))
        );
        // Regression: a stack check whose jump is the last instruction put the entry probe
        // just past the function.
        let tail_check = [
            0xc3, // ret
            0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
            0x76, 0xf9, // jbe to the start
        ];
        let p = points(&tail_check, 0x1000).unwrap();
        assert_eq!(p.entry, 0x1000);
        assert_eq!(p.returns, vec![0x1000]);
        assert_eq!(
            points(&[0xc3; MAX_RETURNS + 1], 0),
            Err(CodeError::TooManyReturns)
        );
    }
}
