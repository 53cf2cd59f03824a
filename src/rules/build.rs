//! Rules text → [`Rules`]: parse with the pest grammar, then resolve names
//! (selectors and groups may be used before they are defined) and index.

use std::collections::HashMap;
use std::sync::Arc;

use pest::iterators::Pair;
use pest::Parser;

use super::{ActionSet, GrantIndex, GroupDef, Member, Rules, SelectorDef, Subject, Target};
use crate::csel::{build_expression, check_nesting, BuildContext, Expression};
use crate::diagnostic::{did_you_mean, Diagnostics};
use crate::grammar::{Grammar, Rule};

struct PendingGrant<'i> {
    pair: Pair<'i, Rule>,
}

pub(super) fn build(file: &str, text: &str) -> Result<Rules, Diagnostics> {
    check_nesting(file, text, true)?;
    let ctx = BuildContext { file, source: text };
    let mut parsed = Grammar::parse(Rule::rules_file, text).map_err(|e| Diagnostics::from(ctx.syntax_error(e)))?;
    let statements = parsed.next().map(Pair::into_inner).into_iter().flatten();

    let mut errors = Vec::new();
    let mut selectors: Vec<SelectorDef> = Vec::new();
    let mut selector_by_name: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<GroupDef> = Vec::new();
    let mut group_by_name: HashMap<String, usize> = HashMap::new();
    let mut pending = Vec::new();

    for statement in statements {
        match statement.as_rule() {
            Rule::selector_def => {
                let mut parts = statement.into_inner().skip(1);
                let (Some(name_pair), Some(expr_pair)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let name = name_text(&name_pair);
                let (line, column) = name_pair.line_col();
                if let Some(previous) = selector_by_name.get(&name) {
                    errors.push(ctx.error_at(
                        &name_pair,
                        format!(
                            "selector `{name}` is already defined at line {}",
                            selectors[*previous].line
                        ),
                    ));
                    continue;
                }
                match build_expression(&ctx, expr_pair) {
                    Ok(expr) => {
                        selector_by_name.insert(name.clone(), selectors.len());
                        selectors.push(SelectorDef {
                            name,
                            line,
                            column,
                            expression: Arc::new(Expression::new(expr)),
                        });
                    }
                    Err(e) => errors.push(e),
                }
            }
            Rule::group_def => {
                let mut parts = statement.into_inner().skip(1);
                let Some(name_pair) = parts.next() else { continue };
                let name = name_text(&name_pair);
                if let Some(previous) = group_by_name.get(&name) {
                    errors.push(ctx.error_at(
                        &name_pair,
                        format!("group `{name}` is already defined at line {}", groups[*previous].line),
                    ));
                    continue;
                }
                let mut members = Vec::new();
                for member_pair in parts {
                    let Some(inner) = member_pair.into_inner().next() else {
                        continue;
                    };
                    let member = name_text(&inner);
                    let (line, column) = inner.line_col();
                    if inner.as_rule() == Rule::bare_name && member.starts_with('@') {
                        errors.push(ctx.error_at(&inner, "groups cannot contain groups: list the users"));
                    } else if matches!(member.as_str(), "anonymous" | "authenticated") {
                        errors.push(ctx.error_at(
                            &inner,
                            format!("`{member}` is a subject of its own, not a user: grant to it directly"),
                        ));
                    } else if members.iter().any(|m: &Member| m.name == member) {
                        errors.push(ctx.error_at(&inner, format!("`{member}` is listed twice in group `{name}`")));
                    } else {
                        members.push(Member {
                            name: member,
                            line,
                            column,
                        });
                    }
                }
                group_by_name.insert(name.clone(), groups.len());
                groups.push(GroupDef {
                    name,
                    line: name_pair.line_col().0,
                    members,
                });
            }
            Rule::grant => pending.push(PendingGrant { pair: statement }),
            _ => {}
        }
    }

    let mut grants = Vec::new();
    let mut index = GrantIndex {
        by_group: vec![Vec::new(); groups.len()],
        ..GrantIndex::default()
    };
    for PendingGrant { pair } in pending {
        let (line, column) = pair.line_col();
        let text = pair.as_str().split_whitespace().collect::<Vec<_>>().join(" ");
        let mut actions = ActionSet::default();
        let mut targets = Vec::new();
        let mut subjects = Vec::new();
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::actions => {
                    for action in part.into_inner() {
                        match ActionSet::from_word(action.as_str()) {
                            Some(set) => actions = actions.union(set),
                            None => {
                                let word = action.as_str();
                                let mut d = ctx.error_at(
                                    &action,
                                    format!("unknown action `{word}`: the actions are {}", ActionSet::ACTION_WORDS),
                                );
                                if let Some(near) =
                                    did_you_mean(word, ["read", "add", "edit", "delete", "pull", "push"])
                                {
                                    d = d.with_help(format!("did you mean `{near}`?"));
                                }
                                errors.push(d);
                            }
                        }
                    }
                }
                Rule::targets => {
                    for target in part.into_inner() {
                        match target.as_rule() {
                            Rule::everything => targets.push(Target::Everything),
                            Rule::inline_selector => {
                                let Some(expr_pair) = target.into_inner().next() else {
                                    continue;
                                };
                                match build_expression(&ctx, expr_pair) {
                                    Ok(expr) => targets.push(Target::Inline(Arc::new(Expression::new(expr)))),
                                    Err(e) => errors.push(e),
                                }
                            }
                            _ => {
                                let name = name_text(&target);
                                match selector_by_name.get(&name) {
                                    Some(i) => targets.push(Target::Selector(*i)),
                                    None => {
                                        let mut d = ctx.error_at(&target, format!("unknown selector `{name}`"));
                                        match did_you_mean(&name, selectors.iter().map(|s| s.name.as_str())) {
                                            Some(near) => d.message.push_str(&format!(" — did you mean `{near}`?")),
                                            None => {
                                                d = d.with_help(
                                                    "define it with `selector NAME = EXPRESSION`, or write the expression in parentheses",
                                                )
                                            }
                                        }
                                        errors.push(d);
                                    }
                                }
                            }
                        }
                    }
                }
                Rule::subjects => {
                    for subject in part.into_inner() {
                        if subject.as_rule() == Rule::group_ref {
                            let Some(name_pair) = subject.clone().into_inner().next() else {
                                continue;
                            };
                            let name = name_text(&name_pair);
                            if group_by_name.contains_key(&name) {
                                subjects.push(Subject::Group(name));
                            } else {
                                let mut d = ctx.error_at(&subject, format!("unknown group `@{name}`"));
                                match did_you_mean(&name, groups.iter().map(|g| g.name.as_str())) {
                                    Some(near) => d.message.push_str(&format!(" — did you mean `@{near}`?")),
                                    None => d = d.with_help("define it with `group NAME = user, user`"),
                                }
                                errors.push(d);
                            }
                            continue;
                        }
                        let name = name_text(&subject);
                        subjects.push(match name.as_str() {
                            "anonymous" => Subject::Anonymous,
                            "authenticated" => Subject::Authenticated,
                            _ => Subject::User(name),
                        });
                    }
                }
                _ => {}
            }
        }
        let number = grants.len() as u32;
        for subject in &subjects {
            match subject {
                Subject::Anonymous => index.anonymous.push(number),
                Subject::Authenticated => index.authenticated.push(number),
                Subject::User(u) => index.by_user.entry(u.clone()).or_default().push(number),
                Subject::Group(g) => {
                    if let Some(i) = group_by_name.get(g) {
                        index.by_group[*i].push(number);
                    }
                }
            }
        }
        grants.push(super::Grant {
            line,
            column,
            text,
            actions,
            targets,
            subjects,
        });
    }
    for list in index.by_user.values_mut().chain(index.by_group.iter_mut()) {
        list.dedup();
    }
    if !errors.is_empty() {
        errors.sort_by_key(|d| (d.line, d.column));
        return Err(Diagnostics(errors));
    }

    let mut groups_of_user: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, group) in groups.iter().enumerate() {
        for member in &group.members {
            groups_of_user.entry(member.name.clone()).or_default().push(i);
        }
    }
    Ok(Rules {
        source_name: file.to_string(),
        selectors,
        selector_by_name,
        groups,
        groups_of_user,
        grants,
        index,
    })
}

/// A name as written: bare, or a quoted string with escapes applied.
fn name_text(pair: &Pair<Rule>) -> String {
    match pair.as_rule() {
        Rule::string => crate::csel::unescape_literal(pair.clone().into_inner().next().map_or("", |p| p.as_str())),
        _ => pair.as_str().to_string(),
    }
}
