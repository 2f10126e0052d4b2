//! `enforcer check-kernel`: which kernel TCP hook forms load and attach here, and precisely why
//! the others do not. Attaches nothing permanently: every form tried is unloaded again.

use anyhow::Result;
use aya::Btf;

use crate::datapath::{
    btf,
    hooks::{self, HookError, HookForm},
    loader,
};

/// One line per form: `FORM: attaches (targets)`, `FORM: loads, cannot attach: ...`, or
/// `FORM: cannot load: ...`. Then the form `auto` would pick. Fails if no form works.
pub fn run() -> Result<()> {
    let offsets = btf::sock_offsets()?;
    let mut ebpf = loader::load(&offsets)?;
    let kernel_btf = Btf::from_sys_fs().ok();
    let mut chosen = None;
    for form in HookForm::ALL {
        match hooks::attach_form(&mut ebpf, form, kernel_btf.as_ref()) {
            Ok(targets) => {
                println!("{form}: attaches ({})", targets.join(", "));
                hooks::detach_form(&mut ebpf, form);
                chosen.get_or_insert(form);
            }
            Err(err @ HookError::Attach { .. }) => println!("{form}: loads, cannot attach: {err}"),
            Err(err) => println!("{form}: cannot load: {err}"),
        }
    }
    match chosen {
        Some(form) => {
            println!("auto: {form}");
            Ok(())
        }
        None => anyhow::bail!("no kernel TCP hook form works on this kernel"),
    }
}
