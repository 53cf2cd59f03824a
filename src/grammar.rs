//! The pest parser generated from `grammar/`. Only the language (`csel`) and
//! the rules file (`rules`) modules look inside it.

use pest_derive::Parser;

#[derive(Parser)]
#[grammar = "../grammar/csel.pest"]
#[grammar = "../grammar/rules.pest"]
pub(crate) struct Grammar;
